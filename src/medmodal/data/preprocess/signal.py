"""Signal processor (see base.py for the contract)."""

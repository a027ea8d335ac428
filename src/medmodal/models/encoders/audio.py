"""Audio encoders (see base.py for the contract)."""

"""Training: :mod:`.trainer` (the Trainer loop, resumable state), :mod:`.losses` (task losses,
class weights), :mod:`.distributed` (torchrun + DistributedDataParallel).

Nothing is imported here (the trainer pulls in the whole model stack)."""

__all__ = ["distributed", "losses", "trainer"]

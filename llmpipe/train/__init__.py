"""Layer train: trainer arguments, the one fit and finish, the monitor and guard, checkpoints' callbacks, LoRA."""

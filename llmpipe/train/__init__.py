"""Training plumbing shared by every stage: trainer arguments, device/precision, progress."""

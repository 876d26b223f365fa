"""Layer data: reading, checking, cleaning, mixing and tokenizing the rows every stage trains on."""

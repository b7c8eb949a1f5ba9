"""The data engine (RAM's step 3): generate missing tags with a baseline model, clean wrong ones by their regions."""

"""`hychat bench` and `hychat doctor`: measurements of this machine and model."""

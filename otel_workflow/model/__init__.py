"""What the package's parts exchange: plain records, no behaviour."""

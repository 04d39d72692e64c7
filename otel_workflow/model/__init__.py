"""What every layer shares: the records the read side returns and the recognition rules (attribute names)."""

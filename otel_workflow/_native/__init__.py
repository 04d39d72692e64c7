"""The C modules (built at install where a compiler is found) and their shared header."""

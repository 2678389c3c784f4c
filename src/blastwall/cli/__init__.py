"""The command line: parsing and thin handlers over blastwall.api."""

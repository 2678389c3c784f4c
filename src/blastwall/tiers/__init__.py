"""One package per isolation tier; each enforces a Plan or refuses it whole."""

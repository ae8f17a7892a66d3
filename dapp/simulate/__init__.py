"""`microgrid simulate`: many households, trading against a no-trading baseline, and the report."""

"""Small shared helpers: tables, devices, seeding, files."""

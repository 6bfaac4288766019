"""Model families: a recipe of members grown one from another, run resumably, with a report."""

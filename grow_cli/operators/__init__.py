"""Growth operators: every method in one registry (`registry`: name, paper, exactness, where it applies), their
implementations (`depth`: layer maps; `width`: the axis-by-axis widening) and the index maps width uses
(`index_maps`)."""

"""The pipeline's stages and shared code. A regular package (not a namespace one), so a copy of the
repository run from its own root never mixes its modules with those of an installed checkout."""

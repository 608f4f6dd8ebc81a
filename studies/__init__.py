"""The studies: experiments that train models to choose a default, as the docs report them
(`python -m studies.recipe`: docs/recipe.md; `python -m studies.multislice`: docs/multislice.md). Speed
benchmarks, which train nothing to judge it, are in `benchmarks/`."""

"""The studies: experiments that train models to choose a default, as the docs report them
(`python -m benchmarks.studies.recipe`: docs/recipe.md; `python -m benchmarks.studies.multislice`:
docs/multislice.md). The speed benchmarks beside them, in `benchmarks/`, train nothing to judge it."""

"""`lumbar-fast info`: what a cache holds, from its own tables and attributes."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(help="Counts per sequence, label distribution per condition, errors, size on disk, schema "
                    "version and ingest parameters of CACHE; with --errors or --csv, the errors themselves.")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--errors", "list_errors", is_flag=True,
              help="print every file or series ingest could not use, one `path: reason` line each")
@click.option("--csv", "csv_file", type=click.Path(path_type=Path, dir_okay=False),
              help="write the errors table (study_id, series_id, path, reason) to this CSV file")
def command(cache: Path, as_json: bool, list_errors: bool, csv_file: Path | None) -> None:
    from lumbar_fast.cache import describe, error_lines, open_cache

    reader = open_cache(cache)
    if list_errors or csv_file:
        errors = reader.errors()
        if list_errors and as_json:  # the rows as JSON records, as --json promises
            click.echo(errors.to_json(orient="records", indent=1))
        for line in error_lines(errors) if list_errors and not as_json else []:
            click.echo(line)
        if csv_file:
            csv_file.parent.mkdir(parents=True, exist_ok=True)
            errors.to_csv(csv_file, index=False)
            click.echo(f"wrote {len(errors)} error(s) to {csv_file}", err=list_errors)
        return
    report = describe(reader)
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report))


def format_report(report: dict) -> str:
    """The info report as aligned text lines."""
    params = report["params"]
    lines = [
        f"cache       {report['path']}  (schema {report['schema_version']}, lumbar-fast "
        f"{report['lumbar_fast_version']}, {report['size_bytes'] / 2**20:.1f} MiB on disk, "
        f"{report['npy_bytes'] / 2**20:.1f} MiB of .npy copies beside it)",
        f"split       {report['split']}, {report['studies']} studies, from {report['source']['data_dir']}",
        f"parameters  size {params['size']}, channels {params['channels']}, crop_mm "
        + ", ".join(f"{seq} {mm:g}" for seq, mm in params["crop_mm"].items())
        + f", canonical side {params['canonical_side']}, format {params['fmt']}, "
        f"limit_studies {params['limit_studies']}",
    ]
    for seq, counts in report["sequences"].items():
        severity = ", ".join(f"{name} {n}" for name, n in counts["level_severity"].items())
        lines.append(f"{seq:<11} {counts['studies']} studies, {counts['series']} series, "
                     f"{counts['stack_images']} stack images, {counts['level_crops']} level crops "
                     f"({severity})")
    for condition, counts in report["labels"].items():
        lines.append(f"  {condition:<34} " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    reasons = ", ".join(f"{n} {reason}" for reason, n in report["error_reasons"].items())
    lines.append(f"errors      {report['errors']}" + (f" ({reasons})" if reasons else ""))
    return "\n".join(lines)

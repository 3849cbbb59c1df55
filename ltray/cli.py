"""The `ltray` command. Each command names its run folder with --artifacts and its data with
--dataset NAME or --items FILE --interactions FILE. Errors are one line plus a hint, unless --debug."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ltray.config import Config, ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Look at a dataset.")
app.add_typer(data_app, name="data")
console = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override, e.g. embed.batch_size=128")]
DatasetOpt = Annotated[str | None, typer.Option(help="built-in dataset: synthetic | movielens-latest-small")]
ItemsOpt = Annotated[str | None, typer.Option(help="items file or folder (CSV, Parquet, JSONL)")]
InterOpt = Annotated[str | None, typer.Option("--interactions", help="interactions file or folder")]
ArtOpt = Annotated[str | None, typer.Option(help="run folder or URI (default ./artifacts/<dataset>)")]
ItemColOpt = Annotated[str | None, typer.Option("--item-id-col", help="item id column")]
TextColOpt = Annotated[str | None, typer.Option("--text-col", help="item text column")]
UserColOpt = Annotated[str | None, typer.Option("--user-id-col", help="user id column")]
TsColOpt = Annotated[str | None, typer.Option("--ts-col", help="timestamp column")]
WeightColOpt = Annotated[str | None, typer.Option("--weight-col", help="weight column")]
TemplateOpt = Annotated[str | None, typer.Option("--text-template", help='e.g. "{title}. Genres: {genres}"')]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks")]


def _errors_as_lines(fn):
    """Known failures print one line and a hint and exit 2; --debug shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ltray.artifacts import ArtifactError
        from ltray.data.schema import DataError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, ArtifactError, FileNotFoundError, ValueError) as e:
            if kwargs.get("debug"):
                raise
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            hint = getattr(e, "hint", None)
            if hint:
                console.print(f"[yellow]hint:[/] {hint}", highlight=False, soft_wrap=True)
            else:
                console.print("[yellow]hint:[/] run again with --debug for the traceback", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def build_config(config: Path | None, set_: list[str] | None, *, dataset=None, items=None, interactions=None,
                 item_id_col=None, text_col=None, user_id_col=None, ts_col=None, weight_col=None,
                 text_template=None) -> Config:
    overrides = list(set_ or [])
    for key, val in (("dataset", dataset), ("items", items), ("interactions", interactions),
                     ("item_id_col", item_id_col), ("text_col", text_col), ("user_id_col", user_id_col),
                     ("ts_col", ts_col), ("weight_col", weight_col), ("text_template", text_template)):
        if val is not None:
            overrides.append(f"data.{key}={json.dumps(val)}")
    return load_config(config, overrides)


def artifacts_uri(cfg: Config, artifacts: str | None) -> str:
    from ltray.artifacts import default_artifacts_dir

    return artifacts or default_artifacts_dir(cfg.data.dataset if not cfg.data.items else "custom")


@data_app.command("inspect")
@_errors_as_lines
def data_inspect(
    config: ConfigOpt = None, set_: SetOpt = None, dataset: DatasetOpt = None, items: ItemsOpt = None,
    interactions: InterOpt = None, item_id_col: ItemColOpt = None, text_col: TextColOpt = None,
    user_id_col: UserColOpt = None, ts_col: TsColOpt = None, weight_col: WeightColOpt = None,
    text_template: TemplateOpt = None,
    plot: Annotated[Path | None, typer.Option(help="where to write the long-tail PNG")] = None,
    item: Annotated[str | None, typer.Option("--item", help="show one item with its keywords")] = None,
    artifacts: ArtOpt = None, debug: DebugOpt = False,
):
    """Print dataset stats (users, items, interactions, sparsity, head/tail/cold) and a long-tail plot."""
    from ltray.data import load_dataset
    from ltray.data.inspect import dataset_stats, plot_long_tail

    cfg = build_config(config, set_, dataset=dataset, items=items, interactions=interactions,
                       item_id_col=item_id_col, text_col=text_col, user_id_col=user_id_col, ts_col=ts_col,
                       weight_col=weight_col, text_template=text_template)
    ds = load_dataset(cfg.data)
    stats = dataset_stats(ds, cfg.data.head_share)
    table = Table(title=f"dataset {ds.name}", show_header=False)
    for k, v in stats.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else (f"{v:.4f}" if isinstance(v, float) else str(v)))
    out.print(table)
    if item is not None:
        _show_item(ds, item, cfg)
    plot_path = plot or Path(artifacts_uri(cfg, artifacts)) / "long_tail.png"
    plot_long_tail(ds, plot_path, cfg.data.head_share)
    out.print(f"long-tail plot: {plot_path}")


def _show_item(ds, item_id: str, cfg: Config) -> None:
    from ltray.text_mining import item_keywords

    row = ds.items.loc[ds.items["item_id"] == item_id]
    if row.empty:
        raise ValueError(f"item '{item_id}' is not in the catalog")
    kw = item_keywords(ds.items["text"].tolist())
    idx = int(row.index[0])
    out.print(f"item {item_id}: {row['text'].iloc[0]}")
    out.print(f"keywords: {', '.join(kw[idx])}")
    out.print(f"interactions: {int((ds.interactions['item_id'] == item_id).sum())}")


def main() -> None:  # pragma: no cover - console entry for python -m
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

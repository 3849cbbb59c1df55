"""The `ltray` command. Each command names its run folder with --artifacts and its data with
--dataset NAME or --items FILE --interactions FILE. Errors are one line plus a hint, unless --debug.
Commands that start Ray take --address (which cluster) and --verbose (Ray's own logs on the terminal;
by default they go to <run folder>/logs/ray.log)."""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ltray.config import DATA_OPTION, Config, ConfigError, artifacts_uri, build_config, load_config
from ltray.errors import LtrayError
from ltray.logs import lines_to

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Look at a dataset.")
app.add_typer(data_app, name="data")
console = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override, e.g. embed.batch_size=128")]


def _data_opt(field: str):
    """A data option as the jobs/ scripts have it too (ltray.config.DATA_OPTIONS: one list for both)."""
    o = DATA_OPTION[field]
    return Annotated[str | None, typer.Option(o.flag, help=o.help)]


DatasetOpt = _data_opt("dataset")
ItemsOpt = _data_opt("items")
InterOpt = _data_opt("interactions")
ArtOpt = Annotated[str | None, typer.Option(help="run folder or URI (default ./artifacts/<dataset>)")]
ItemColOpt = _data_opt("item_id_col")
TextColOpt = _data_opt("text_col")
UserColOpt = _data_opt("user_id_col")
TsColOpt = _data_opt("ts_col")
WeightColOpt = _data_opt("weight_col")
TemplateOpt = _data_opt("text_template")
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks")]
AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Ray cluster: local (always a private one), auto (the running one), host:port or "
    "ray://host:port; default: the one `ray start` or RAY_ADDRESS names, else a private one")]
VerboseOpt = Annotated[bool, typer.Option(
    "--verbose", help="show Ray's own logs and progress on the terminal (default: <run folder>/logs/ray.log)")]

# What a command started (Ray's log redirection): closed when the command ends, error or not.
_session = contextlib.ExitStack()


def _errors_as_lines(fn):
    """Known failures print one line and a hint and exit 2; --debug shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _session.enter_context(lines_to(_say))  # ltray's log lines, until the command ends
            return fn(*args, **kwargs)
        except Exception as e:
            if kwargs.get("debug"):
                raise
            from ltray.raysession import cluster_lost, lost_cluster_message

            if cluster_lost(e):  # checked first: Ray's ConnectionError is an OSError, some of its errors too
                msg, hint = lost_cluster_message(e)
            elif isinstance(e, (LtrayError, FileNotFoundError, ValueError)):
                msg, hint = str(e), getattr(e, "hint", None) or "run again with --debug for the traceback"
            else:
                raise
            console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
            console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        finally:
            _session.close()  # Ray's logs back where they were (the error line above is on the terminal); no
            # handler left on the "ltray" logger

    return wrapper


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
    plot_path = (plot or Path(artifacts_uri(cfg, artifacts)) / "long_tail.png").resolve()
    plot_long_tail(ds, plot_path, cfg.data.head_share)
    out.print(f"long-tail plot: {plot_path}")  # absolute: a bare --plot NAME lands in the current folder


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


def _data_opts_config(config, set_, dataset, items, interactions, item_id_col, text_col, user_id_col, ts_col,
                      weight_col, text_template) -> Config:
    return build_config(config, set_, dataset=dataset, items=items, interactions=interactions,
                        item_id_col=item_id_col, text_col=text_col, user_id_col=user_id_col, ts_col=ts_col,
                        weight_col=weight_col, text_template=text_template)


def _say(msg: str) -> None:
    """One ltray log line on the terminal (stderr)."""
    console.print(f"[cyan]>[/] {escape(msg)}", highlight=False, soft_wrap=True)


def _ray_init(uri: str, address: str | None, verbose: bool) -> None:
    """Start or join Ray for this command and say which; Ray's logs go to the run folder unless verbose."""
    from ltray.artifacts import ArtifactStore
    from ltray.raysession import LOG_NAME, ray_session

    log_file = ArtifactStore(uri).root / LOG_NAME  # a remote store's local cache
    _session.enter_context(ray_session(address, log_file, verbose))


@app.command()
@_errors_as_lines
def run(config: ConfigOpt = None, set_: SetOpt = None, dataset: DatasetOpt = None, items: ItemsOpt = None,
        interactions: InterOpt = None, item_id_col: ItemColOpt = None, text_col: TextColOpt = None,
        user_id_col: UserColOpt = None, ts_col: TsColOpt = None, weight_col: WeightColOpt = None,
        text_template: TemplateOpt = None, artifacts: ArtOpt = None, address: AddressOpt = None,
        verbose: VerboseOpt = False, debug: DebugOpt = False):
    """Split by time -> fit every stage on train -> evaluate on test against baselines -> report."""
    from ltray.data.checks import load_checked

    cfg = _data_opts_config(config, set_, dataset, items, interactions, item_id_col, text_col, user_id_col,
                            ts_col, weight_col, text_template)
    uri = artifacts_uri(cfg, artifacts)
    ds = load_checked(cfg, holdout=True)  # bad or too little input answers before Ray starts
    from ltray.pipeline import run as run_pipeline

    _ray_init(uri, address, verbose)
    report = run_pipeline(cfg, uri, dataset=ds)
    out.print(f"report: {report}")
    out.print(f"report (markdown): {report.with_suffix('.md')}")


@app.command()
@_errors_as_lines
def fit(config: ConfigOpt = None, set_: SetOpt = None, dataset: DatasetOpt = None, items: ItemsOpt = None,
        interactions: InterOpt = None, item_id_col: ItemColOpt = None, text_col: TextColOpt = None,
        user_id_col: UserColOpt = None, ts_col: TsColOpt = None, weight_col: WeightColOpt = None,
        text_template: TemplateOpt = None, artifacts: ArtOpt = None, address: AddressOpt = None,
        verbose: VerboseOpt = False, debug: DebugOpt = False):
    """Train every stage on all the given interactions (no holdout)."""
    cfg = _data_opts_config(config, set_, dataset, items, interactions, item_id_col, text_col, user_id_col,
                            ts_col, weight_col, text_template)
    uri = artifacts_uri(cfg, artifacts)
    _stages_up_to("rank", cfg, uri, False, address, verbose)  # bad or too little input answers before Ray
    out.print(f"artifacts: {uri}")


def _stages_up_to(last: str, cfg: Config, uri: str, holdout: bool, address: str | None, verbose: bool):
    """`pipeline.fit` up to the stage `last`, the input read and checked before Ray starts (only the rank
    stage needs the minimum sizes)."""
    from ltray.data.checks import load_checked

    ds = load_checked(cfg, holdout, check_sizes=last == "rank")
    from ltray.pipeline import fit as fit_pipeline

    _ray_init(uri, address, verbose)
    return fit_pipeline(cfg, uri, holdout, dataset=ds, until=last)


@app.command()
@_errors_as_lines
def embed(config: ConfigOpt = None, set_: SetOpt = None, dataset: DatasetOpt = None, items: ItemsOpt = None,
          interactions: InterOpt = None, item_id_col: ItemColOpt = None, text_col: TextColOpt = None,
          text_template: TemplateOpt = None, artifacts: ArtOpt = None,
          holdout: Annotated[bool, typer.Option(help="split by time first (as `ltray run` does)")] = False,
          address: AddressOpt = None, verbose: VerboseOpt = False, debug: DebugOpt = False):
    """Embed the catalog on a Ray Data actor pool (only new or changed items are encoded)."""
    cfg = _data_opts_config(config, set_, dataset, items, interactions, item_id_col, text_col, None, None, None,
                            text_template)
    uri = artifacts_uri(cfg, artifacts)
    _stages_up_to("embed", cfg, uri, holdout, address, verbose)
    out.print(f"embeddings: {uri}/embed")


@app.command()
@_errors_as_lines
def index(config: ConfigOpt = None, set_: SetOpt = None, dataset: DatasetOpt = None, items: ItemsOpt = None,
          interactions: InterOpt = None, artifacts: ArtOpt = None,
          holdout: Annotated[bool, typer.Option(help="split by time first (as `ltray run` does)")] = False,
          address: AddressOpt = None, verbose: VerboseOpt = False, debug: DebugOpt = False):
    """Fit ALS and build the FAISS tail and full indexes, user profiles and the text->CF bridge."""
    cfg = _data_opts_config(config, set_, dataset, items, interactions, None, None, None, None, None, None)
    uri = artifacts_uri(cfg, artifacts)
    _stages_up_to("index", cfg, uri, holdout, address, verbose)
    out.print(f"cf + index: {uri}/cf, {uri}/index")


@app.command()
@_errors_as_lines
def train(config: ConfigOpt = None, set_: SetOpt = None, dataset: DatasetOpt = None, items: ItemsOpt = None,
          interactions: InterOpt = None, artifacts: ArtOpt = None,
          holdout: Annotated[bool, typer.Option(help="split by time first (as `ltray run` does)")] = False,
          export_encoder: Annotated[Path | None, typer.Option(
              "--export-encoder", help="with rank.text_tower=lora|top_layers: write the fine-tuned encoder "
              "here as a Hugging Face folder; `--set embed.model=DIR` then re-embeds the catalog with it")] = None,
          address: AddressOpt = None, verbose: VerboseOpt = False, debug: DebugOpt = False):
    """Train the CTR ranker with Ray Train and choose the tail share on validation.

    The fine-tuning loop: `ltray train --set rank.text_tower=lora --export-encoder DIR`, then
    `ltray embed --set embed.model=DIR` (and the later stages) with the tuned encoder's tail vectors.
    """
    cfg = _data_opts_config(config, set_, dataset, items, interactions, None, None, None, None, None, None)
    if export_encoder is not None and cfg.rank.text_tower == "frozen":
        raise ConfigError("--export-encoder needs a trained text tower: add --set rank.text_tower=lora "
                          "(or top_layers)")
    uri = artifacts_uri(cfg, artifacts)
    run = _stages_up_to("rank", cfg, uri, holdout, address, verbose)
    out.print(f"ranker: {uri}/rank (tail_share {run.blend['tail_share']:.2f})")
    if export_encoder is not None:
        import shutil

        from ltray.rank.train import TEXT_ENCODER_DIR

        src = run.store.stage_path("rank") / TEXT_ENCODER_DIR
        if not (src / "config.json").is_file():
            raise FileNotFoundError(f"{src} holds no exported encoder: the rank stage trained no text tower")
        shutil.copytree(src, export_encoder, dirs_exist_ok=True)
        out.print(f"fine-tuned encoder: {export_encoder} (use --set embed.model={export_encoder})")


@app.command()
@_errors_as_lines
def evaluate(config: ConfigOpt = None, set_: SetOpt = None, dataset: DatasetOpt = None, items: ItemsOpt = None,
             interactions: InterOpt = None, artifacts: ArtOpt = None, address: AddressOpt = None,
             verbose: VerboseOpt = False, debug: DebugOpt = False):
    """Evaluate a held-out run against the baselines and write the report (fits what is missing)."""
    from ltray.pipeline import evaluate_if_changed

    cfg = _data_opts_config(config, set_, dataset, items, interactions, None, None, None, None, None, None)
    uri = artifacts_uri(cfg, artifacts)
    report = evaluate_if_changed(_stages_up_to("rank", cfg, uri, True, address, verbose), cfg)
    out.print(f"report: {report}")


@app.command()
@_errors_as_lines
def recommend(
    artifacts: Annotated[str, typer.Option(help="a fitted run folder or URI")],
    users: Annotated[Path, typer.Option(help="user ids: a text file (one per line) or CSV/Parquet with user_id")],
    out_path: Annotated[Path, typer.Option("--out", help="output Parquet file")] = Path("recs.parquet"),
    k: Annotated[int, typer.Option(min=1, max=500)] = 20,
    tail_share: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    debug: DebugOpt = False,
):
    """Batch recommendations for a list of users -> Parquet (user_id, item_id, rank, score, segment, source)."""
    store = _open_run(artifacts)
    ids = _read_user_ids(users)
    import pandas as pd

    from ltray.recommend import load_recommender
    from ltray.threads import single_threaded

    rec = load_recommender(store)
    frames = []
    with single_threaded():
        for u in ids:
            r = rec.recommend(u, k=k, tail_share=tail_share, explain=False)
            frames.append(pd.DataFrame({"user_id": u, "item_id": r["item_id"], "rank": range(1, len(r) + 1),
                                        "score": r["score"].astype("float32"), "segment": r["segment"],
                                        "source": r["source"]}))
    table = pd.concat(frames, ignore_index=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out_path, index=False)
    out.print(f"{len(ids)} users, {len(table)} rows -> {out_path}")


def _open_run(artifacts: str):
    """A fitted run, opened read-only before anything heavy is imported: a typo answers in a second."""
    from ltray.artifacts import ArtifactStore

    store = ArtifactStore(artifacts, mode="r")
    store.require("data", "embed", "cf", "index")  # what load_recommender reads (rank is optional)
    return store


def _read_user_ids(path: Path) -> list[str]:
    from ltray.data.readers import read_table
    from ltray.data.schema import DataError

    if path.suffix.lower() in (".csv", ".parquet", ".jsonl", ".tsv"):
        df = read_table(path)
        if "user_id" not in df.columns:
            raise DataError("missing column (found: " + ", ".join(map(str, df.columns[:5])) + ")",
                            file=str(path), column="user_id")
        return df["user_id"].astype(str).tolist()
    if not path.exists():
        raise DataError("file does not exist", file=str(path))
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@app.command()
@_errors_as_lines
def serve(
    artifacts: Annotated[str, typer.Option(help="a fitted run folder or URI")],
    port: Annotated[int | None, typer.Option(help="HTTP port (default serve.port; 0 = a free one)")] = None,
    host: Annotated[str | None, typer.Option(help="bind address (default serve.host)")] = None,
    config: ConfigOpt = None, set_: SetOpt = None, address: AddressOpt = None, debug: DebugOpt = False,
):
    """Serve a run over HTTP with Ray Serve (Ingress -> CFRecall -> TailRetrieval -> CTRRanker); blocks, Ctrl-C stops."""
    overrides = list(set_ or []) + [f"serve.{k}={v}" for k, v in (("port", port), ("host", host)) if v is not None]
    cfg = load_config(config, overrides)
    _open_run(artifacts)  # before Ray and Serve start (importing Serve alone takes seconds)
    from deployments.app import run_local
    from ltray.raysession import ray_session

    # Serve's own logs stay on the terminal (the run folder is opened read-only): only which cluster.
    _session.enter_context(ray_session(address, None, True))
    run_local(artifacts, cfg.serve, echo=lambda msg: out.print(msg, highlight=False, soft_wrap=True))


def main() -> None:  # pragma: no cover - console entry for python -m
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

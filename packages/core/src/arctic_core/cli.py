"""The `arctic` command.

Built-in commands (`train`, `config`, `plugins`, `data`, `runs`, `report`) plus one command group per
installed method (`arctic sft train ...`), discovered lazily: `arctic --help` imports only
the plugins' light modules, never torch. Errors become a one-line message and an exit
code: 2 for a bad recipe or bad usage, 1 for a failure while running.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import click

from arctic_core import __version__, plugins
from arctic_core.errors import ArcticError
from arctic_core.stops import Stopped, stop_line

RECIPE_HELP = "Recipe file (TOML or YAML)."
SET_HELP = "Override a recipe key: --set optimizer.lr=3e-4 (repeatable; value read as TOML, else a string)."

# Options of DeepSpeed's launcher that `train` passes through (any other --option is passed too).
LAUNCHER_OPTIONS = ("num_gpus", "num_nodes", "hostfile", "master_port", "master_addr", "include", "exclude")


def _recipe_path(ctx: click.Context, _: Any, value: str) -> str:
    """A recipe file, or the name of a bundled recipe (`arctic sft train quickstart`)."""
    from arctic_core.recipe.bundled import find_recipe

    group = ctx.parent.command if ctx.parent is not None else None
    return find_recipe(value, group.found.name if isinstance(group, MethodGroup) else None)


def recipe_arguments(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(func)
    return click.argument("recipe", type=click.Path(), callback=_recipe_path)(func)


def recipes_command(method: str) -> click.Command:
    """`arctic <method> recipes`: the recipes the method's package bundles, runnable by name."""

    @click.command(
        "recipes", help=f"List the recipes bundled with {method} (run one: arctic {method} train NAME)."
    )
    def command() -> None:
        from arctic_core.recipe.bundled import describe, method_recipes

        found = method_recipes(method)
        if not found:
            click.echo(f"{method} bundles no recipes.")
        width = max((len(name) for name in found), default=0)
        for name, path in found.items():
            click.echo(f"{name:<{width}}  {describe(path)}\n{'':<{width}}  {path}")

    return command


def launcher_arguments(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.argument("launcher_args", nargs=-1, type=click.UNPROCESSED)(func)
    for name in reversed(LAUNCHER_OPTIONS):
        func = click.option(f"--{name}", default=None, help=f"DeepSpeed launcher --{name}.")(func)
    return click.option("--local_rank", type=int, default=None, hidden=True)(func)


def _launcher_args(options: dict[str, Any], extra: Sequence[str]) -> list[str]:
    args: list[str] = []
    for name in LAUNCHER_OPTIONS:
        if options.get(name) is not None:
            args += [f"--{name}", str(options[name])]
    return args + list(extra)


def train_command(method: str | None) -> click.Command:
    """`arctic train` (type from the recipe) or `arctic <method> train` (type fixed)."""

    @click.command(
        "train",
        context_settings={"ignore_unknown_options": True},
        help="Train with RECIPE. DeepSpeed launcher options (--num_gpus 2, --hostfile ...) launch several ranks.",
    )
    @recipe_arguments
    @launcher_arguments
    def command(
        recipe: str,
        overrides: tuple[str, ...],
        launcher_args: tuple[str, ...],
        local_rank: int | None,
        **options: Any,
    ) -> None:
        from arctic_core.launch import train

        train(
            recipe,
            list(overrides),
            _launcher_args(options, launcher_args),
            method=method,
            local_rank=local_rank,
        )

    return command


def verify_command(method: str | None) -> click.Command:
    """`arctic verify` (type from the recipe) or `arctic <method> verify` (type fixed)."""

    @click.command("verify")
    @recipe_arguments
    @click.option("--checks", default="", help="Comma-separated checks to run (default: all that apply).")
    @click.option("--steps", type=int, default=5, show_default=True, help="Steps of the resume check.")
    @click.option(
        "--samples", type=int, default=16, show_default=True, help="Training samples the checks use."
    )
    @click.option(
        "--shrink", is_flag=True, help="Use the model's architecture at a toy size, random weights."
    )
    @click.option(
        "--json", "json_path", default=None, help="Write the table here (default <run folder>/verify.json)."
    )
    def command(
        recipe: str, overrides: tuple[str, ...], checks: str, json_path: str | None, **numbers: Any
    ) -> None:
        """Prove on RECIPE that packing, accumulation, ranks, resume (and more) train what they should.

        Runs short variants of the recipe (its data, tokenizer, trainer code) and compares their
        losses and gradients; prints a table, exits 1 when a check fails (docs/verify.md).
        """
        from arctic_core.verify.report import run_and_report
        from arctic_core.verify.runner import Options

        names = tuple(name.strip() for name in checks.split(",") if name.strip())
        options = Options(checks=names, **numbers)
        run_and_report(
            recipe, overrides, method=method, options=options, json_path=json_path, echo=click.echo
        )

    return command


class MethodGroup(click.Group):
    """`arctic <method> ...`: `train` plus the plugin's own verbs, loaded when used (a plugin verb
    named like a built-in one replaces it: it should extend it, as `arctic embed train` does)."""

    def __init__(self, found: plugins.InstalledMethod):
        assert found.method is not None
        super().__init__(found.name, help=found.method.description, short_help=found.method.description)
        self.found = found
        self._loaded = False
        self.add_command(train_command(found.name))
        self.add_command(recipes_command(found.name))
        self.add_command(verify_command(found.name))
        self.add_command(plan_command(found.name))

    def _load_verbs(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        assert self.found.method is not None
        if self.found.method.commands:
            group = plugins.load_reference(self.found.method.commands, light=True)
            for name, command in group.commands.items():
                self.add_command(command, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_verbs()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_verbs()  # a plugin's verb may extend a built-in one (arctic embed train --eval)
        return super().get_command(ctx, cmd_name)


def broken_command(found: plugins.InstalledMethod) -> click.Command:
    """A method whose plugin cannot be used: says why and exits 1."""

    @click.command(
        found.name,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        short_help=f"[broken] {found.package} {found.version}: {found.error}",
        add_help_option=False,
    )
    def command() -> None:
        raise ArcticError(
            f"method {found.name!r} from {found.package} {found.version} is broken: {found.error}"
        )

    return command


class ArcticGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands) + [n for n in plugins.method_names() if n not in self.commands]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        found = plugins.get(cmd_name)
        if found is None:
            return None
        return broken_command(found) if found.broken else MethodGroup(found)


@click.group(cls=ArcticGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="arctic (arctic-core)")
def cli() -> None:
    """Arctic: post-training for large language models.

    Methods come from installed packages (arctic-sft, arctic-swiftkv, ...): each adds
    `arctic <method> train RECIPE`, and `arctic train RECIPE` picks the method from the
    recipe's `type`.
    """


cli.add_command(train_command(None))
cli.add_command(verify_command(None))


@cli.group("config")
def config_group() -> None:
    """Inspect recipes without running anything."""


@config_group.command("show")
@recipe_arguments
@click.option("--format", "fmt", type=click.Choice(["yaml", "toml"]), default="yaml", show_default=True)
@click.option(
    "--docs", is_flag=True, help="Print every key of the recipe's type with its type, default and meaning."
)
def config_show(recipe: str, overrides: tuple[str, ...], fmt: str, docs: bool) -> None:
    """Print the fully resolved RECIPE, every default included (or, with --docs, its key reference)."""
    from arctic_core.recipe import load_recipe
    from arctic_core.recipe.render import render

    loaded = load_recipe(recipe, overrides)
    if docs:
        from arctic_core.recipe.docs import reference

        click.echo(reference(type(loaded.config)), nl=False)
        return
    trainer: Any = loaded.trainer_class()
    config, sources, warnings = trainer.resolve_config(loaded.config)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(render(config, fmt), nl=False)
    if sources:  # the values taken from the model's folder (or defaults), and from where
        click.echo("# resolved from the model folder (key: source):")
        for key, source in sources.items():
            click.echo(f"#   {key}: {source}")


@config_group.command("check")
@recipe_arguments
def config_check(recipe: str, overrides: tuple[str, ...]) -> None:
    """Check RECIPE as a run would before building anything: exit 0 if good, 2 naming each bad key.

    Besides the keys and values: precision against this machine's hardware, PEFT settings,
    the [deepspeed] table, checkpoint and source types, that local input paths exist, and the
    recipe against a local model's config.json (heads, layers, widths, positions). Reads no
    weights and no data rows.
    """
    from arctic_core.recipe import load_recipe
    from arctic_core.recipe.checks import preflight

    loaded = load_recipe(recipe, overrides)
    warnings: list[str] = list(loaded.notes)
    preflight(loaded.config, load_trainer=loaded.trainer_class, source=recipe, warn=warnings.append)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{recipe}: ok (type {loaded.config.type!r})")


@cli.group("data")
def data_group() -> None:
    """Prepare, generate and clean training data without training."""


@data_group.command("prepare")
@recipe_arguments
def data_prepare(recipe: str, overrides: tuple[str, ...]) -> None:
    """Tokenize, mask, filter, pack and cache RECIPE's data, as `train` would before training."""
    from arctic_core.data.prepare import prepare

    click.echo(prepare(recipe, overrides))


@data_group.command("generate")
@recipe_arguments
def data_generate(recipe: str, overrides: tuple[str, ...]) -> None:
    """Answer RECIPE's `[generate]` prompts into `[generate] output_dir` (resumable, cached).

    Ranks: run one process per rank with RANK and WORLD_SIZE set (any launcher); each takes its shards.
    """
    import os

    from arctic_core.recipe import load_recipe
    from arctic_core.synth.generate import run_generate

    loaded = load_recipe(recipe, overrides)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    folder = loaded.path.parent if loaded.path else None
    click.echo(f"generated data in {run_generate(loaded.config, rank, world, click.echo, folder)}")


@data_group.command("clean")
@recipe_arguments
def data_clean(recipe: str, overrides: tuple[str, ...]) -> None:
    """Deduplicate, filter and decontaminate per RECIPE's `[clean]`; writes data.jsonl and report.json."""
    from arctic_core.recipe import load_recipe
    from arctic_core.synth.clean import run_clean

    loaded = load_recipe(recipe, overrides)
    report = run_clean(loaded.config, click.echo, loaded.path.parent if loaded.path else None)
    click.echo(
        f"kept {report['kept_rows']} of {report['input_rows']} rows in {loaded.config.clean.output_dir}"
    )


@data_group.command("inspect")
@recipe_arguments
@click.option("-n", "rows", type=click.IntRange(min=1), default=3, show_default=True, help="Rows per source.")
def data_inspect(recipe: str, overrides: tuple[str, ...], rows: int) -> None:
    """Print RECIPE's first samples with trained tokens marked, and a train/serve parity report."""
    import sys

    from arctic_core.data.inspect import inspect

    click.echo(inspect(recipe, overrides, n=rows, colour=sys.stdout.isatty()))


def plan_command(method: str | None) -> click.Command:
    """`arctic plan` (type from the recipe) or `arctic <method> plan` (type fixed)."""

    @click.command("plan")
    @recipe_arguments
    @click.option(
        "--hardware",
        required=True,
        help="COUNTxDEVICE: 8xH100, 1xL4 (H100, H200, A100-40GB, A100-80GB, L4, B200).",
    )
    @click.option("--nodes", type=int, default=1, show_default=True, help="Nodes of that many devices each.")
    @click.option("--memory", default=None, help="Memory per device instead of the preset's, e.g. 24GiB.")
    @click.option("--json", "json_path", default=None, help="Also write the plan as JSON to this file.")
    def command(
        recipe: str,
        overrides: tuple[str, ...],
        hardware: str,
        nodes: int,
        memory: str | None,
        json_path: str | None,
    ) -> None:
        """Estimate RECIPE's memory per device on HARDWARE: what fits, and what would make it fit (docs/plan.md).

        Reads the model's config only (no weights, no data).
        """
        import json

        from arctic_core.plan.hardware import parse_hardware
        from arctic_core.plan.report import as_json, plan, render

        devices = parse_hardware(hardware, nodes=nodes, memory=memory)
        report = plan(recipe, overrides, devices, method=method)
        click.echo(render(report), nl=False)
        if json_path:
            with open(json_path, "w", encoding="utf-8") as handle:
                json.dump(as_json(report), handle, indent=2)
            click.echo(f"wrote {json_path}")

    return command


cli.add_command(plan_command(None))


@cli.command("runs")
@click.argument("folder", default="runs", type=click.Path(file_okay=False))
def runs_command(folder: str) -> None:
    """List the runs under FOLDER (default runs/): method, status, steps, eval, tokens, wall time, checkpoints.

    Status: running (a live process holds the folder's lock), finished, stopped or failed (as the
    run recorded it in status.json), with the step reached.
    """
    from arctic_core.report.runs import find_runs, load_run, table

    found = [load_run(path) for path in find_runs(folder)]
    if not found:
        click.echo(f"no runs in {folder}")
        return
    for line in table(found):
        click.echo(line)


@cli.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--output", "-o", default="report.html", show_default=True, help="Where to write the HTML page."
)
@click.option("--text", is_flag=True, help="Draw compact curves in the terminal instead (80 columns).")
@click.option(
    "--peak-tflops",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="The device's peak TFLOPS: MFU = tflops / this (else the mfu the run wrote on a known GPU).",
)
def report_command(runs: tuple[str, ...], output: str, text: bool, peak_tflops: float | None) -> None:
    """Plot one or more RUNS (run folders) side by side: one self-contained HTML page, or --text.

    Curves of every metric the runs wrote (loss and eval loss, the method's metrics, learning
    rate, grad norm, tokens/s, TFLOPS, MFU, memory), the recipe keys that differ between the
    runs, each resolved recipe, and verify.json / plan.json when present. Needs matplotlib
    (pip install 'arctic-core[report]') for the HTML page.
    """
    from arctic_core.report.runs import load_run

    loaded = [load_run(path) for path in runs]
    if text:
        from arctic_core.report.text import render as render_text

        for line in render_text(loaded, peak_tflops=peak_tflops):
            click.echo(line)
        return
    from pathlib import Path

    from arctic_core.report.html import render as render_html

    page = render_html(loaded, peak_tflops=peak_tflops)
    Path(output).write_text(page, encoding="utf-8")
    click.echo(f"wrote {output} ({len(loaded)} run(s); open it in a browser)")


@cli.command("plugins")
def plugins_command() -> None:
    """List installed methods, features and kernels with their packages and versions."""
    from arctic_core import features

    found: list[Any] = plugins.installed()
    extras: list[Any] = features.installed()
    if not found:
        click.echo("No methods installed. Install one, e.g. `pip install arctic-sft`.")
    width = max((len(m.name) for m in found), default=0)
    for m in found:
        state = f"BROKEN: {m.error}" if m.broken else (m.method.description if m.method else "")
        click.echo(f"{m.name:<{width}}  {m.package} {m.version}  {state}")
    if extras:
        click.echo("\nFeatures (recipe keys for every method):")
        width = max(len(f.name) for f in extras)
    for f in extras:
        state = f"BROKEN: {f.error}" if f.broken else (f.feature.description if f.feature else "")
        click.echo(f"{f.name:<{width}}  {f.package} {f.version}  {state}")
    _echo_kernels()


def _echo_kernels() -> None:
    """The kernel table of `arctic plugins`: who provides each kernel and what `kernels = "auto"` runs here."""
    from arctic_core.kernels import registry

    rows = [("kernel", "package", "triton", "validated on GPU", "auto picks here")]
    for entry in registry.installed():
        kernel = entry.kernel
        picks = f"BROKEN: {entry.problem}" if entry.problem else registry.auto_choice(kernel)
        has_triton = "yes" if kernel.triton else "no"
        rows.append(
            (kernel.name, entry.package, has_triton, "yes" if kernel.validated_on_gpu else "no", picks)
        )
    click.echo(f"\nKernels (recipe key `{registry.KEY}`: auto, torch or triton, for every method):")
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo(
            "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[4]])
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: maps Arctic's errors to exit codes without tracebacks."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="arctic", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            line, code = stop_line(exc.__cause__)
            click.echo(line, err=True)
            sys.exit(code)
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except (ArcticError, Stopped, KeyboardInterrupt) as exc:
        line, code = stop_line(exc)
        click.echo(line, err=True)
        sys.exit(code)
    except Exception as exc:  # a bug: its traceback, then the one line saying where the run was
        traceback.print_exc()
        click.echo(stop_line(exc)[0], err=True)
        sys.exit(1)
    sys.exit(0)

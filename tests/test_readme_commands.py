"""The README's shell commands, run in README order with the micro recipe swapped in.

Every command line of every ```sh / ```bash / ```shell / ```zsh block of README.md, and every `$ `
line of a ```console block (continuation lines joined, comments dropped), is either run here through
the in-process CLI or listed in EXCLUDED with the reason; the "Your own data" block's commands, minutes of
training on real text, are bench/own_data.py's (tests/test_own_data.py checks that they resolve). A built-in recipe given by name (`llmpipe
run tiny`) is the repository's recipes/NAME.yaml, so it reads as that path here (the sandbox's copy).
A command that is neither run nor excluded fails the test, and so does an EXCLUDED or ISOLATED entry
the README no longer has. `make demo` runs as the Makefile's
demo command.

The commands run verbatim in a sandbox that looks like the repository from the inside:
- cwd is tmp/repo, holding a copy of data/ (`llmpipe data synth --out data` writes there) and
  recipes/, where each recipe is the README's one overlaid with recipes/micro.yaml (micro's model,
  sizes and steps; the recipe's own name, align method and data). So `recipes/tiny.yaml` is the micro
  recipe named tiny, `recipes/grpo.yaml` micro-sized GRPO on the verifiable data, and run folders
  such as runs/tiny, runs/rlhf and hf/tiny-dpo land in tmp; tmp/shared links to ../shared.
- runs/tiny starts as a copy of the session's micro run: that run is exactly `llmpipe run
  recipes/micro.yaml`, which is what `make demo` trains here, so `make demo` and the `llmpipe run` after
  it find every stage complete (checked: nothing is retrained). runs/other, the README's "another run",
  is a copy of it too. runs/grpo starts with the micro run's finished stages that its recipe shares
  (tokenizer, pretrain and sft), so those commands train only what is new to them. runs/rlhf gets
  tokenizer and pretrain only: `llmpipe run recipes/rlhf.yaml` trains its own sft, so runs/tiny/sft is
  another checkpoint, as on a fresh clone. (Were they the same files, the README's next command, RL
  `--from runs/tiny/sft --out runs/rlhf`, would find its stages complete, and the one after it, `--rl
  grpo`, would be refused: runs/rlhf/rlhf already holds RLOO.)
- The Commands block lists alternatives, not a script: after `llmpipe run`, the single-stage examples
  with other settings (`pretrain max_steps=50`, a DPO with `loss_type=ipo`, a LoRA SFT, ...) would be
  refused on the finished runs/tiny by design (exit 2: "already holds a finished pretrain trained with
  other settings ... pass --restart"). Those in ISOLATED each run on their own copy of runs/tiny
  without the stage they train (the state the example assumes), then runs/tiny is put back.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

SHELL_BLOCKS = {"sh", "bash", "shell", "console", "zsh"}
BUILT_IN = {path.stem for path in (ROOT / "recipes").glob("*.yaml")}
CHAT_INPUT = "What colour is the kettle?\n/reset\nWhat is 2 plus 3?\n/exit\n"

EXCLUDED = {
    "make test": "runs the whole test suite, this test included (about 4 minutes)",
    "make dist": "builds the wheel and sdist; tests/test_install.py builds them the same way",
    "pip install 'dist/llmpipe-*.whl'": "tests/test_install.py installs the built wheel into a fresh virtual environment",
    "cd '~/anywhere' '&&' llmpipe run tiny": "tests/test_install.py runs the installed llmpipe from an empty folder "
                                             "(`llmpipe run micro`: the same code path, test-sized)",
    "HF_HUB_OFFLINE=1 lm_eval --model hf --model_args pretrained=runs/tiny/sft,dtype=float32 --tasks llmpipe_colours "
    "--include_path tests/fixtures/lm_eval_task --device cpu --batch_size 4 --output_path runs/tiny/lm_eval":
        "not an llmpipe command; tests/test_lm_eval.py runs it on the micro SFT checkpoint (with --limit 10)",
    "accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes 8 -m llmpipe.cli run gpt2-124m":
        "needs 8 CUDA GPUs and the GPU-sized gpt2-124m recipe",
    **{f"accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_machines 2 --num_processes 16 --machine_rank {rank} "
       "--main_process_ip HOST0 --main_process_port 29500 -m llmpipe.cli run gpt2-124m":
       "needs two machines of 8 CUDA GPUs (HOST0) and the GPU-sized gpt2-124m recipe" for rank in (0, 1)},
    "OMP_NUM_THREADS=1 accelerate launch --config_file recipes/accelerate/fsdp-cpu.yaml --num_processes 2 -m llmpipe.cli run "
    "micro --device cpu":
        "two processes of a whole chain cost minutes on 2 cores; tests/test_scaleout.py runs this launch (same config, "
        "2 processes, OMP_NUM_THREADS=1), killed during pretrain and run again",
    **{f"OMP_NUM_THREADS=1 accelerate launch --config_file recipes/accelerate/fsdp-cpu.yaml --num_machines 2 --num_processes 2 "
       f"--machine_rank {rank} --main_process_ip 127.0.0.1 --main_process_port 29511 -m llmpipe.cli align micro --method rlhf "
       f"--device cpu{tail}":
       "the two-machine rehearsal: tests/test_scaleout.py runs these two launchers together (on a free port)"
       for rank, tail in ((0, " '&'"), (1, ""))},
    "wait": "waits for the first rehearsal launcher, run by tests/test_scaleout.py",
    "export 'MAIN_HOST=$(scontrol' show hostnames '$SLURM_JOB_NODELIST' '|' head -n '1)'":
        "a line of a Slurm batch script: needs a Slurm cluster",
    "srun bash -c 'accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_machines \"$SLURM_NNODES\"      "
    "--num_processes $((SLURM_NNODES * SLURM_GPUS_ON_NODE)) --machine_rank \"$SLURM_NODEID\"      --main_process_ip \"$MAIN_HOST\" "
    "--main_process_port 29500 -m llmpipe.cli run gpt2-124m'": "a line of a Slurm batch script: needs a Slurm cluster with GPU nodes",
    "OMP_NUM_THREADS=1 accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes 2 -m llmpipe.cli run "
    "micro --device cpu":
        "two processes of a whole chain cost minutes on 2 cores; tests/test_scaleout.py runs this launch (same config, "
        "2 processes, OMP_NUM_THREADS=1) stage by stage",
    "llmpipe pretrain recipes/tiny.yaml time_budget=120":
        "trains for 120 s by design; tests/test_budget.py runs time and token budgets on micro (seconds)",
    "llmpipe scale recipes/tiny.yaml --minutes 15":
        "a 15-minute sweep by design; tests/test_scaling.py runs a small kept plan, bench/scaling.py this default",
    "llmpipe tokenizer pretrain.train_files=../shared/data/tinyshakespeare.train.jsonl "
    "pretrain.validation_files=../shared/data/tinyshakespeare.validation.jsonl --out runs/shakespeare":
        "with the next command, bench/budget.py runs exactly this pair (issue 15's acceptance run)",
    "llmpipe pretrain pretrain.train_files=../shared/data/tinyshakespeare.train.jsonl "
    "pretrain.validation_files=../shared/data/tinyshakespeare.validation.jsonl pretrain.time_budget=120 --out runs/shakespeare":
        "trains for 120 s by design; bench/budget.py runs it (tests/test_budget.py: budgets on micro)",
    "llmpipe scale pretrain.train_files=../shared/data/tinyshakespeare.train.jsonl "
    "pretrain.validation_files=../shared/data/tinyshakespeare.validation.jsonl --out runs/shakespeare":
        "a 15-minute sweep by design; bench/scaling.py runs it on tinyshakespeare",
    "llmpipe align recipes/rlhf.yaml --from runs/real/sft --out runs/real-rlhf "
    "reward.train_files=../shared/data/hh_helpful_base.train.jsonl "
    "reward.validation_files=../shared/data/hh_helpful_base.validation.jsonl reward.max_length=256 "
    "align.train_files=../shared/data/hh_helpful_base.train.jsonl align.validation_files=../shared/data/hh_helpful_base.validation.jsonl "
    "align.max_length=256":
        "starts from runs/real/sft, which only the own-data block makes (bench/own_data.py, tens of minutes); its figures "
        "were taken by running it after bench/own_data.py --keep; tests/test_rl.py runs rlhf with fitted prompts on micro",
    "llmpipe align recipes/tiny.yaml --method cai align.cai.train=dpo --out runs/cai-dpo --from runs/tiny/sft":
        "the micro model's greedy replies are the same few tokens whatever it is asked, so no revision differs from its "
        "draft and DPO has no pair (exit 2, as it should); tests/test_cai.py trains cai with align.cai.train=dpo on "
        "sampled replies",
    "llmpipe align recipes/tiny.yaml --method cai align.cai.constitution=my-principles.md align.cai.judge=runs/smol/base":
        "names the user's own constitution; tests/test_cai.py runs cai with a Markdown constitution and a judge stage folder",
}
# Commands whose documented exit code is not 0, and why.
MICRO_REFUSES = ("a verdict with a no exits 3; the micro model's replies hold few words, which the safety rubric reads as "
                 "refusing most benign prompts (over-refusal above the 0.5 bound): safer is no")
EXIT_CODES = {
    "llmpipe verdict runs/tiny": (3, MICRO_REFUSES),
    "llmpipe verdict runs/tiny --stage sft": (3, MICRO_REFUSES + "; and micro SFT's answer accuracy stays 0: learned is no"),
    "llmpipe verdict runs/tiny recipes/tiny.yaml verdict.max_over_refusal=0.3 suites.sample=0": (3, MICRO_REFUSES),
}
# The README's GGUF section: running the exported file needs llama.cpp or Ollama, neither installed by llmpipe.
_LLAMA_CPP_WHY = "needs llama.cpp's binaries; tests/test_export_gguf.py runs the exported files in llama.cpp (llama-cpp-python)"
_OLLAMA_WHY = "needs Ollama (not installed here); tests/test_export_gguf.py checks the Modelfile's templates"
EXCLUDED.update({
    "llama-cli -m gguf/tiny-dpo/tiny-dpo-f16.gguf -cnv --jinja": _LLAMA_CPP_WHY,
    "llama-server -m gguf/tiny-dpo/tiny-dpo-f16.gguf --jinja --port 8080": _LLAMA_CPP_WHY,
    "cd gguf/tiny-dpo": "the folder of the Ollama commands below",
    "ollama create tiny-dpo -f Modelfile": _OLLAMA_WHY,
    "ollama run tiny-dpo": _OLLAMA_WHY,
})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread, as the README advises on a shared machine: on 2 busy cores, two threads per
    process made these commands 20x slower (generation's small matrix products wait on each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def _check_pretrain(run: Path) -> None:
    assert _manifest(run / "pretrain")["summary"]["steps"] == 50


def _check_sft_from_other(run: Path) -> None:
    assert _manifest(run / "sft")["parent"]["path"] == str((run.parent / "other" / "pretrain").resolve())


def _check_ipo(run: Path) -> None:
    align = _manifest(run / "dpo")["config"]["align"]
    assert (align["beta"], align["loss_type"]) == (0.2, "ipo")


def _check_lora(run: Path) -> None:
    assert _manifest(run / "sft")["config"]["sft"]["lora"]["r"] == 8 and (run / "sft" / "adapter").is_dir()


# Command -> (stage folders runs/tiny lacks while it runs, a check of what it trained).
ISOLATED: dict[str, tuple[tuple[str, ...], Callable[[Path], None]]] = {
    "llmpipe pretrain recipes/tiny.yaml max_steps=50": (("pretrain", "sft", "dpo"), _check_pretrain),
    "llmpipe sft recipes/tiny.yaml --from runs/other/pretrain": (("sft", "dpo"), _check_sft_from_other),
    "llmpipe align recipes/tiny.yaml --method dpo beta=0.2 loss_type=ipo": (("dpo",), _check_ipo),
    "llmpipe sft recipes/tiny.yaml lora.enabled=true lora.r=8": (("sft", "dpo"), _check_lora),
}


def _own_data_commands() -> set[str]:
    """The "Your own data" block's commands, as readme_commands() spells them: bench/own_data.py runs them end
    to end on real text (minutes), tests/test_own_data.py checks that they parse and resolve."""
    spec = importlib.util.spec_from_file_location("own_data_bench", ROOT / "bench" / "own_data.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return {shlex.join(by_path(words)) for words in bench.readme_commands()}


def readme_commands() -> list[str]:
    """Every command line of the README's shell blocks, in order, as shlex-normalised strings."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        if block.group(1) not in SHELL_BLOCKS:
            continue
        for line in block.group(2).replace("\\\n", " ").splitlines():
            line = line.strip()
            if block.group(1) == "console":  # a session: commands after a `$ ` prompt, the rest is output
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(by_path(words)))
    return commands


def by_path(words: list[str]) -> list[str]:
    """`llmpipe COMMAND NAME ...` with a built-in recipe NAME reads as recipes/NAME.yaml (see the module doc)."""
    if len(words) > 2 and words[0] == "llmpipe" and words[1] != "recipes" and words[2] in BUILT_IN:
        return [*words[:2], f"recipes/{words[2]}.yaml", *words[3:]]
    return words


def make_demo_command() -> str:
    """The command of the Makefile's demo target, as a user would type it."""
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    lines = [line.strip() for line in recipe.group(1).splitlines()]
    assert len(lines) == 1 and lines[0].startswith("$(BIN)/llmpipe "), lines
    return shlex.join(by_path(shlex.split(lines[0].removeprefix("$(BIN)/"))))


def _overlay(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _overlay(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _sandbox(root: Path, micro_run: Path) -> Path:
    repo = root / "repo"
    shutil.copytree(ROOT / "data", repo / "data")
    (repo / "recipes").mkdir()
    micro = yaml.safe_load((ROOT / "recipes" / "micro.yaml").read_text(encoding="utf-8"))
    for path in (ROOT / "recipes").glob("*.yaml"):
        own = yaml.safe_load(path.read_text(encoding="utf-8"))
        # micro's step counts, not the demo's time budget (which would replace them: 160 s of pretraining).
        own.get("pretrain", {}).pop("time_budget", None)
        # micro's DPO too: runs/tiny is a copy of the micro run, trained without the demo's RPO (its stages would
        # otherwise differ in align.rpo_alpha). tests/test_recipes.py loads the real tiny.yaml with every method.
        own.get("align", {}).pop("rpo_alpha", None)
        (repo / "recipes" / path.name).write_text(yaml.safe_dump({**_overlay(own, micro), "name": own["name"]}, sort_keys=False))
    if (ROOT.parent / "shared").is_dir():
        (root / "shared").symlink_to(ROOT.parent / "shared", target_is_directory=True)
    runs = repo / "runs"
    for name in ("tiny", "other"):
        shutil.copytree(micro_run, runs / name)
    # The finished stages these recipes share with the micro run (same settings, same data).
    # Not runs/rlhf's sft: see the module docstring.
    for name, stages in (("rlhf", ("tokenizer", "pretrain")), ("grpo", ("tokenizer", "pretrain", "sft"))):
        for stage in stages:
            shutil.copytree(micro_run / stage, runs / name / stage)
    # `llmpipe run my-recipe.yaml`: a recipe file of the user's own, here the (micro-sized) tiny recipe.
    shutil.copyfile(repo / "recipes" / "tiny.yaml", repo / "my-recipe.yaml")
    # The files the eval and generate examples name: the probe suite is the README's own example.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (repo / "my_probes.jsonl").write_text(re.search(r"^```json\n(.*?)^```", readme, re.S | re.M).group(1), encoding="utf-8")
    (repo / "my_chat.jsonl").write_text("".join((ROOT / "data" / "sft.validation.jsonl").read_text().splitlines(True)[:8]))
    text = [json.loads(line)["text"] for line in (ROOT / "data" / "pretrain.validation.jsonl").read_text().splitlines()[:4]]
    (repo / "my_text.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    (repo / "prompts.jsonl").write_text(json.dumps({"prompt": "What colour is the kettle?"}) + "\n"
                                        + json.dumps({"prompt": [{"role": "user", "content": "What is 2 plus 3?"}]}) + "\n")
    (repo / "prompts.txt").write_text("The kettle is\nMira lives in\n", encoding="utf-8")
    # "Start from a Hugging Face model": a downloaded model folder, the same in the hub cache (its layout:
    # models--ORG--NAME/snapshots/COMMIT, refs/REVISION), and a folder of the user's text.
    from hf_models import make_model_folder

    make_model_folder(repo / "SmolLM2-135M-Instruct", "llama", "chatml")
    snapshot = root / "hub" / "models--Qwen--Qwen3-0.6B" / "snapshots" / "c1899de2"
    make_model_folder(snapshot, "qwen3", "chatml")
    (root / "hub" / "models--Qwen--Qwen3-0.6B" / "refs").mkdir()
    (root / "hub" / "models--Qwen--Qwen3-0.6B" / "refs" / "main").write_text("c1899de2")
    (repo / "my-text").mkdir()
    shutil.copyfile(repo / "my_text.txt", repo / "my-text" / "part-1.txt")
    return repo


def _llmpipe(command: str):
    from typer.testing import CliRunner

    from llmpipe.cli import app

    words = shlex.split(command)
    assert words[0] == "llmpipe", command
    return CliRunner().invoke(app, words[1:], input=CHAT_INPUT)


def _isolated(repo: Path, command: str):
    """Run `command` on a copy of runs/tiny without the stages it is about to train; put runs/tiny back."""
    drop, check = ISOLATED[command]
    run, kept = repo / "runs" / "tiny", repo / "runs" / ".tiny.kept"
    run.rename(kept)
    try:
        shutil.copytree(kept, run, ignore=lambda folder, names: [n for n in names if Path(folder) == kept and n in drop])
        result = _llmpipe(command)
        if result.exit_code == 0:
            check(run)
        return result
    finally:
        shutil.rmtree(run, ignore_errors=True)
        kept.rename(run)


def test_readme_commands_are_all_run_or_excluded_for_a_reason():
    commands = readme_commands()
    assert "llmpipe run recipes/tiny.yaml" in commands and len(commands) > 20
    for listed in (*EXCLUDED, *ISOLATED, *EXIT_CODES):
        assert listed in commands, f"no longer in the README (update this test): {listed}"
    own_data = _own_data_commands()
    assert own_data and own_data <= set(commands)
    for command in commands:
        runnable = command.startswith("llmpipe ") or command == "make demo"
        assert runnable or command in EXCLUDED or command in own_data, f"README command neither run nor excluded: {command}"
    assert make_demo_command() == "llmpipe run recipes/tiny.yaml"


def test_readme_commands_run_on_the_micro_recipe(micro_run: Path, tmp_path: Path, monkeypatch):
    repo = _sandbox(tmp_path, micro_run)
    monkeypatch.chdir(repo)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert Path.cwd() == repo  # `llmpipe data synth --out data` must write into the sandbox's copy
    demo = {stage: _manifest(repo / "runs" / "tiny" / stage)["created"] for stage in ("tokenizer", "pretrain", "sft", "dpo")}

    ran, failed = [], []
    own_data = _own_data_commands()
    for command in readme_commands():
        if command in EXCLUDED or command in own_data:
            continue
        start = time.monotonic()
        line = make_demo_command() if command == "make demo" else command
        result = _isolated(repo, line) if line in ISOLATED else _llmpipe(line)
        ran.append(f"{time.monotonic() - start:6.1f} s  {command}")
        if result.exit_code != EXIT_CODES.get(command, (0,))[0] or "Traceback" in result.output:
            failed.append(f"{command}\n  exit {result.exit_code}: {result.output[-1500:]}")
    print("\n".join(ran))
    assert not failed, "README commands that failed:\n" + "\n".join(failed)

    runs = repo / "runs"
    # make demo and `llmpipe run` found the micro run complete: nothing was retrained.
    assert {stage: _manifest(runs / "tiny" / stage)["created"] for stage in demo} == demo
    assert _manifest(runs / "tiny" / "kto")["status"] == "complete"
    # Constitutional AI with the defaults (greedy): its dataset beside the model.
    assert _manifest(runs / "tiny" / "cai")["generation"]["prompts"]["train"] > 0 and (runs / "tiny" / "cai" / "revisions.jsonl").is_file()
    assert (repo / "hf" / "tiny-dpo" / "model.safetensors").is_file() and not (repo / "hf" / "tiny-dpo" / "manifest.json").exists()
    assert (runs / "tiny" / "report" / "report.md").is_file() and (runs / "tiny" / "report" / "report.html").is_file()
    assert json.loads((runs / "tiny" / "dpo" / "eval.json").read_text())["against"] == str((runs / "tiny" / "sft").resolve())
    # The regenerated embedded data is the committed data (seed 0).
    for path in (ROOT / "data").iterdir():
        if path.is_dir():  # data/suites: written by `llmpipe data suites`, checked by tests/test_suites.py
            continue
        assert (repo / "data" / path.name).read_bytes() == path.read_bytes(), f"llmpipe data synth changed {path.name}"
    # RL: the last rlhf command reused the reward model for a GRPO policy; grpo.yaml trained grpo, then rloo.
    policy = _manifest(runs / "rlhf" / "rlhf")
    assert policy["metrics"]["algorithm"] == "grpo" and policy["reward_model"]["path"] == str((runs / "rlhf" / "reward").resolve())
    assert _manifest(runs / "grpo" / "grpo")["metrics"]["rewards"] == ["exact_match"]
    assert _manifest(runs / "grpo" / "rloo")["metrics"]["rewards"] == ["exact_match", "format", "length"]
    replies = [json.loads(line) for line in (repo / "replies.jsonl").read_text().splitlines()]
    assert len(replies) == 2 and all(set(r) >= {"prompt", "reply"} for r in replies)
    assert not (runs / ".tiny.kept").exists()

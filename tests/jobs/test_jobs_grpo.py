"""jobs.grpo and jobs.host_sandbox: config and data errors, sandboxed rewards, advantages and loss on hand-computed
values, training end to end, resume, SIGTERM. Cheap: the quick base, 2-4 steps, a handful of short samples."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs import grpo, host_sandbox
from jobs.common import EXIT_SIGTERM, JobConfigError, JobError, write_jsonl
from jobs.host_sandbox import HostSandbox, Limits

BWRAP_OK, BWRAP_WHY = host_sandbox.probe_bwrap()
needs_bwrap = pytest.mark.skipif(not BWRAP_OK, reason=f"bwrap unusable here: {BWRAP_WHY}")
KINDS = [pytest.param("bwrap", marks=needs_bwrap), "process"]

# Random completions of the quick base never compile; these tests score the candidate's text instead (its length
# mod 2 and mod 3), so rewards vary within a group and the policy-gradient path runs.
TEXT_TESTS = (
    "import sys\nsrc = open(sys.path[0] + '/solution.py').read()\n"
    "def test_even():\n    assert len(src) % 2 == 0\n"
    "def test_third():\n    assert len(src) % 3 == 0\n"
)


@pytest.fixture(scope="module")
def grpo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grpo-data") / "train.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": f"Repeat the identifier `job_{i}`."}], "tests": TEXT_TESTS,
         "task_id": f"cluster-{i % 3}"}
        for i in range(8)
    ]  # fmt: skip
    write_jsonl(path, rows)
    return path


def grpo_config(
    finetune_config: Callable[..., dict[str, Any]], base: Path, train: Path, out: Path, **kw: Any
) -> dict[str, Any]:
    cfg = finetune_config(base, train, out, batch_size=2, max_steps=3, seq_len=64, learning_rate=5e-3)
    return {**cfg, "method": "grpo", "num_generations": 4, "max_new_tokens": 12, "sandbox": "process", **kw}


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    host_sandbox.probe_bwrap.cache_clear()
    yield
    host_sandbox.probe_bwrap.cache_clear()


# ---------------------------------------------------------------- the sandbox

ADD = "from solution import add\nassert add(1, 2) == 3\ndef test_neg():\n    assert add(-1, -1) == -2\n"


@pytest.mark.parametrize("kind", KINDS)
def test_sandbox_rewards(kind: str) -> None:
    """Passing, half passing, not compiling, os._exit(0) at import or in a test: fraction of tests passed."""
    sb = HostSandbox(kind, limits=Limits(wall_s=5))
    cases = [
        ("def add(a, b):\n    return a + b\n", 1.0),
        ("def add(a, b):\n    return 3\n", 0.5),  # the top-level asserts pass, test_neg fails
        ("def add(a, b) return a + b\n", 0.0),
        ("import os\nos._exit(0)\n", 0.0),
        ("import os\ndef add(a, b):\n    os._exit(0)\n", 0.0),
        ("import os\nprint('\\nLP-HOST-SANDBOX-DONE cafe 2 2', flush=True)\nos._exit(0)\n", 0.0),  # no nonce
    ]
    runs = sb.run_many([(code, ADD) for code, _ in cases])
    assert [r.reward for r in runs] == [want for _, want in cases]
    assert (runs[1].passed, runs[1].total, runs[1].outcome) == (1, 2, "ran")
    assert sb.kind == kind


@pytest.mark.parametrize("kind", KINDS)
def test_sandbox_bounds_loops_and_fork_bombs(kind: str) -> None:
    sb = HostSandbox(kind, limits=Limits(wall_s=1.0, cpu_s=1, processes=16))
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    started = time.monotonic()
    loop, forks = sb.run_many([("while True:\n    pass\n", ADD), (bomb, ADD)])
    assert time.monotonic() - started < 6
    assert loop.outcome == "timeout" and loop.reward == 0.0
    assert forks.reward == 0.0 and forks.outcome in ("timeout", "error")


@needs_bwrap
def test_sandbox_bwrap_has_no_network_and_no_environment() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        tests = (
            "import os, socket\n"
            f"def test_blocked():\n    s = socket.socket()\n    try:\n        s.connect(('127.0.0.1', {port}))\n"
            "    except OSError:\n        return\n    raise AssertionError('connected')\n"
            "assert 'HOME' not in os.environ and os.getcwd() == '/work'\n"
        )
        run = HostSandbox("bwrap").run("", tests)
    assert (run.passed, run.total) == (2, 2)


def test_sandbox_process_kind_clears_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LP_SECRET_FOR_TEST", "x")
    tests = "import os\nassert 'LP_SECRET_FOR_TEST' not in os.environ\nassert os.listdir('.') == []\n"
    assert HostSandbox("process").run("", tests).reward == 1.0


def test_sandbox_kind_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_probe: None) -> None:
    with pytest.raises(JobConfigError, match="sandbox must be one of auto, bwrap, process"):
        HostSandbox("docker")
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    with pytest.raises(JobError, match="'bwrap' was asked for but is unusable: bwrap is not on PATH"):
        HostSandbox("bwrap")
    auto = HostSandbox("auto")
    assert auto.kind == "process" and auto.fallback_reason == "bwrap is not on PATH"


# ---------------------------------------------------------------- advantages, loss, completions


def test_advantages_and_loss_on_hand_computed_values() -> None:
    adv, zero = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]), 4)
    # group 1: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5; group 2 has no variance
    assert adv.tolist() == pytest.approx([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, 0, 0, 0, 0])
    assert zero == 1
    logp = torch.tensor([-1.0, -1.0], requires_grad=True)
    a = torch.tensor([2.0, -1.0])
    per = grpo.grpo_token_loss(logp, logp.detach(), a, 0.2)
    assert per.tolist() == pytest.approx([-2.0, 1.0])  # ratio 1: -A
    per.sum().backward()
    assert logp.grad is not None and logp.grad.tolist() == pytest.approx([-2.0, 1.0])  # gradient -A * dlogp
    old = torch.tensor([math.log(2 / 3)] * 2)  # ratio 1.5: clipped to 1.2 for A > 0, not for A < 0
    clipped = grpo.grpo_token_loss(torch.zeros(2), old, torch.tensor([1.0, -1.0]), 0.2)
    assert clipped.tolist() == pytest.approx([-1.2, 1.5])
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1])  # clipped: past 1 + eps pushed up, below 1 - eps pushed down
    mask = grpo.clipped(ratio.log(), torch.zeros(5), torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0]), 0.2)
    assert mask.tolist() == [True, False, False, True, False]
    k3 = grpo.grpo_token_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([0.0]), 0.2,
                              torch.tensor([-2.0]), 0.5)  # fmt: skip
    assert float(k3) == pytest.approx(0.5 * (math.exp(-1) + 1 - 1))


def test_completion_code_takes_the_first_fenced_block() -> None:
    assert grpo.completion_code(" def f(): pass\n") == "def f(): pass"
    assert grpo.completion_code("Here:\n```python\nx = 1\n```\nand\n```\ny\n```") == "x = 1\n"
    assert grpo.completion_code("```\nx = 2\n") == "x = 2\n"  # an unclosed fence


# ---------------------------------------------------------------- config and data


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "dpo"}, "method must be grpo"),
        ({"num_generations": 1}, "num_generations must be >= 2"),
        ({"num_generations": "4"}, "num_generations must be int"),
        ({"max_new_tokens": 0}, "max_new_tokens must be > 0"),
        ({"temperature": 0}, "temperature must be > 0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"beta": -0.1}, "beta must be >= 0"),
        ({"sft_weight": -1}, "sft_weight must be >= 0"),
        ({"epsilon": 0}, r"epsilon must be in \(0, 1\)"),
        ({"num_iterations": 0}, "num_iterations must be >= 1"),
        ({"num_iterations": 2.0}, "num_iterations must be int"),
        ({"test_timeout_s": 0}, "test_timeout_s must be > 0"),
        ({"sandbox": "docker"}, "sandbox must be one of auto, bwrap, process"),
        ({"packing": True}, "packing is not supported"),
        ({"eval_file": "e.jsonl"}, "eval_file is not used"),
        ({"seq_len": 64, "max_new_tokens": 64}, r"seq_len \(64\) must exceed max_new_tokens \(64\)"),
        ({"batch_size": 0}, "batch_size must be > 0"),
        ({"typo": 1}, "unknown key"),
    ],
)
def test_bad_config_is_refused(overrides: dict[str, Any], message: str, tmp_path: Path) -> None:
    cfg = {"base_model": "b", "train_file": "t", "output_dir": str(tmp_path), "method": "grpo", **overrides}
    with pytest.raises(JobConfigError, match=message):
        grpo.parse_config(cfg)


def test_defaults() -> None:
    cfg = grpo.parse_config({"base_model": "b", "train_file": "t", "output_dir": "o"})
    assert (cfg.num_generations, cfg.max_new_tokens, cfg.temperature, cfg.top_p) == (4, 128, 1.0, 1.0)
    assert (cfg.beta, cfg.epsilon, cfg.test_timeout_s, cfg.sandbox, cfg.sft_weight) == (0.0, 0.2, 5.0, "auto", 0.0)
    assert cfg.num_iterations == 1


GOOD = {"prompt": [{"role": "user", "content": "q"}], "tests": "assert True\n", "task_id": "c1"}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({**GOOD, "tests": ""}, "line 2: a GRPO line needs non-empty 'tests'"),
        ({k: v for k, v in GOOD.items() if k != "tests"}, "line 2: a GRPO line needs non-empty 'tests'"),
        ({**GOOD, "tests": "def test(:"}, "line 2: 'tests' is not valid Python"),
        ({**GOOD, "tests": "x = 1\n"}, "line 2: 'tests' holds no top-level assert and no test"),
        ({**GOOD, "prompt": "q"}, "line 2: prompt: 'messages' must be a non-empty list"),
        ({**GOOD, "task_id": 7}, "line 2: 'task_id' must be a string"),
        ("not json", "line 2: invalid JSON"),
        ([1, 2], "line 2: expected a JSON object"),
    ],
)
def test_bad_lines_name_their_line(row: Any, message: str, tmp_path: Path, quick_base: Path) -> None:
    from jobs.common import load_tokenizer

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + (row if isinstance(row, str) else json.dumps(row)) + "\n")
    with pytest.raises(JobConfigError, match=message):
        grpo.load_tasks(str(path), load_tokenizer(str(quick_base)), 32)
    path.write_text("\n")
    with pytest.raises(JobConfigError, match="holds no examples"):
        grpo.load_tasks(str(path), load_tokenizer(str(quick_base)), 32)


# ---------------------------------------------------------------- the job


def test_grpo_job_trains_an_adapter(
    tmp_path: Path, quick_base: Path, grpo_file: Path, finetune_config: Callable[..., dict[str, Any]]
) -> None:
    cfg = grpo.parse_config(grpo_config(finetune_config, quick_base, grpo_file, tmp_path / "o", beta=0.05))
    metrics, code = grpo.train(cfg)
    assert code == 0 and metrics["method"] == "grpo" and metrics["steps"] == 3
    assert metrics["sandbox"] == "process" and metrics["groups"] == 6 and metrics["completions"] == 24
    assert 0 <= metrics["zero_variance_groups"] < 6 and metrics["train_tokens"] > 0
    assert metrics["generated_tokens"] > 0 and 0.0 <= metrics["reward_mean_last"] <= 1.0
    assert [s for s, _ in metrics["reward_curve"]] == [1, 2, 3] and len(metrics["pass_rate_curve"]) == 3
    assert math.isfinite(metrics["train_loss"]) and metrics["reward_s_per_completion"] > 0
    assert (tmp_path / "o" / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "o" / "adapter").glob("*.bin"))
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["sandbox"] == "process"
    assert json.loads((tmp_path / "o" / "heartbeat.json").read_text())["step"] == 3


def test_more_updates_per_step_move_the_ratio_until_the_clip_binds(
    tmp_path: Path, quick_base: Path, grpo_file: Path, finetune_config: Callable[..., dict[str, Any]]
) -> None:
    def run(out: str, mu: int) -> dict[str, Any]:
        cfg = grpo_config(finetune_config, quick_base, grpo_file, tmp_path / out, num_iterations=mu,
                          learning_rate=2e-2)  # fmt: skip
        metrics, code = grpo.train(grpo.parse_config(cfg))
        assert code == 0 and metrics["num_iterations"] == mu and metrics["steps"] == 3
        return metrics

    one, four = run("one", 1), run("four", 4)
    assert one["clip_fraction"] == 0.0  # one update per set of samples: rho = 1 throughout
    assert 0.02 < four["clip_fraction"] < 1.0, four["clip_fraction"]  # later updates moved tokens out of the band
    assert one["reward_curve"][0] == four["reward_curve"][0]  # step 1 samples from the same initial policy
    assert four["train_tokens"] > one["train_tokens"]  # each update forwards the samples again
    assert four["completions"] == one["completions"] == 24  # no more generation, only more updates


def test_sampling_is_a_function_of_seed_and_step(quick_base: Path, grpo_file: Path) -> None:
    from jobs.common import load_base_model, load_tokenizer, pick_device
    from jobs.finetune_lora import parse_config as ft_config

    tok = load_tokenizer(str(quick_base))
    cfg = grpo.parse_config({"base_model": "b", "train_file": "t", "output_dir": "o", "max_new_tokens": 10})
    model = load_base_model(str(quick_base), dtype=torch.float32, device=pick_device())
    from jobs.finetune_lora import build_peft_model

    model = build_peft_model(model, ft_config({"base_model": "b", "train_file": "t", "output_dir": "o"}))
    prompts = [t.prompt_ids for t in grpo.load_tasks(str(grpo_file), tok, 32)[:2]]

    def draw(step: int) -> list[list[int]]:
        gen = grpo.step_generator(3, step, 0, torch.device("cpu"))
        return grpo.sample(model, prompts, cfg, eos=tok.eos_token_id, pad=tok.pad_token_id, generator=gen)

    a, b, c = draw(5), draw(5), draw(6)
    assert a == b and a != c and len(a) == 8
    assert all(0 < len(x) <= 10 and (tok.eos_token_id not in x[:-1]) for x in a)


def test_resume_reproduces_the_uninterrupted_run(
    tmp_path: Path, quick_base: Path, grpo_file: Path, finetune_config: Callable[..., dict[str, Any]]
) -> None:
    from safetensors.torch import load_file

    def run(out: str, **kw: Any) -> dict[str, Any]:
        metrics, code = grpo.train(grpo.parse_config(grpo_config(finetune_config, quick_base, grpo_file,
                                                                 tmp_path / out, max_steps=4, **kw)))  # fmt: skip
        assert code == 0
        return metrics

    a = run("a", num_iterations=2)  # two updates per set of samples: a resume repeats both
    run("b", save_steps=2, num_iterations=2)
    c = run("c", resume_from=str(tmp_path / "b" / "checkpoints" / "step-2"), num_iterations=2)
    assert (
        json.loads((tmp_path / "b" / "checkpoints" / "step-2" / "trainer_state.json").read_text())["method"] == "grpo"
    )
    assert c["resumed_from_step"] == 2 and c["reward_curve"] == a["reward_curve"][2:]  # the same samples and rewards
    wa = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    wc = load_file(str(tmp_path / "c" / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wc.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wc[k], rtol=1e-4, atol=1e-5)
    other = tmp_path / "d" / "checkpoints" / "step-1"  # a checkpoint another method wrote
    other.mkdir(parents=True)
    (other / "trainer_state.json").write_text(json.dumps({"step": 1, "method": "dpo"}))
    (other / "COMPLETE").write_text("1\n")
    with pytest.raises(JobConfigError, match="written by method 'dpo', not 'grpo'"):
        run("d", resume_from="auto")


def test_sigterm_checkpoints_and_exits_143(
    tmp_path: Path,
    quick_base: Path,
    grpo_file: Path,
    finetune_config: Callable[..., dict[str, Any]],
    sigterm_at_step: Callable[..., tuple[int, str]],
) -> None:
    out = tmp_path / "out"
    cfg = grpo_config(finetune_config, quick_base, grpo_file, out, max_steps=100_000)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    code, err = sigterm_at_step("jobs.grpo", tmp_path / "cfg.json", out)
    assert code == EXIT_SIGTERM, err
    assert "rewards run in the process sandbox" in err
    [ckpt] = list((out / "checkpoints").iterdir())
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "optimizer.safetensors").is_file()
    assert (ckpt / "rng_state.safetensors").is_file() and (ckpt / "adapter_model.safetensors").is_file()
    assert json.loads((ckpt / "trainer_state.json").read_text())["method"] == "grpo"
    resumed = {**cfg, "max_steps": int(ckpt.name[5:]) + 1, "resume_from": "auto"}
    metrics, code = grpo.train(grpo.parse_config(resumed))
    assert code == 0 and metrics["resumed_from_step"] == int(ckpt.name[5:]) and metrics["steps"] == metrics[
        "resumed_from_step"] + 1  # fmt: skip


def test_bad_config_from_the_command_line(tmp_path: Path, run_job: Callable[..., Any]) -> None:
    (tmp_path / "cfg.json").write_text(
        json.dumps({"base_model": "b", "train_file": "t", "output_dir": "o", "num_generations": 1})
    )
    proc = run_job(["-m", "jobs.grpo", "--config", str(tmp_path / "cfg.json")])
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: num_generations must be >= 2 (advantages compare samples of one prompt)"
    assert not os.path.exists("o")


# ---------------------------------------------------------------- starting from the champion's adapter


@pytest.fixture(scope="module")
def champion_adapter(quick_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained-looking adapter (random non-zero LoRA weights, the test config's LoRA: r 4 on q/v) saved as a
    version's adapter is."""
    from jobs.common import load_base_model
    from jobs.finetune_lora import build_peft_model
    from jobs.finetune_lora import parse_config as ft_config

    out = tmp_path_factory.mktemp("champion") / "adapter"
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    model = build_peft_model(
        load_base_model(str(quick_base), dtype=torch.float32, device=torch.device("cpu")),
        ft_config({"base_model": "b", "train_file": "t", "output_dir": "o", "lora": lora}),
    )
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def _logp(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)


def test_init_adapter_makes_the_policy_the_champion(
    tmp_path: Path, quick_base: Path, grpo_file: Path, champion_adapter: Path,
    finetune_config: Callable[..., dict[str, Any]],
) -> None:  # fmt: skip
    """Before the first update the policy's log-probs are the champion's (loaded exactly), not the base's."""
    from jobs.common import load_adapter, load_base_model

    def base() -> Any:
        return load_base_model(str(quick_base), dtype=torch.float32, device=torch.device("cpu"))

    ids = torch.tensor([[1, 5, 9, 13, 2, 7, 3, 11]])
    champion = load_adapter(base(), champion_adapter).eval()  # as the gate and serving load the champion
    cfg = grpo.parse_config(
        grpo_config(finetune_config, quick_base, grpo_file, tmp_path / "o", init_adapter=str(champion_adapter))
    )
    policy = grpo.policy_model(base(), cfg, resuming=False).eval()
    torch.testing.assert_close(_logp(policy, ids), _logp(champion, ids), rtol=0, atol=1e-6)
    fresh = grpo.policy_model(base(), cfg, resuming=True).eval()  # a resume: the checkpoint's adapter comes next
    assert not torch.allclose(_logp(fresh, ids), _logp(champion, ids), atol=1e-3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lora": {"r": 8, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}, r"its r 4 differs from .* 8"),
        ({"lora": {"r": 4, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}}, "its lora_alpha 8 differs"),
        ({"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj"]}}, "its target_modules"),
        ({"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]}},
         "its modules_to_save"),
        ({"drop_key": True}, "weights do not match this job's adapter"),
        ({"drop_file": "adapter_config.json"}, "missing adapter_config.json"),
        ({"corrupt": True}, "unreadable"),
    ],
)  # fmt: skip
def test_a_mismatched_init_adapter_is_refused(
    change: dict[str, Any], message: str, tmp_path: Path, quick_base: Path, grpo_file: Path,
    champion_adapter: Path, finetune_config: Callable[..., dict[str, Any]],
) -> None:  # fmt: skip
    import shutil

    from safetensors.torch import load_file, save_file

    from jobs.common import load_base_model

    adapter = tmp_path / "adapter"
    shutil.copytree(champion_adapter, adapter)
    weights = adapter / "adapter_model.safetensors"
    if change.get("drop_key"):
        w = load_file(str(weights))
        save_file({k: v for k, v in sorted(w.items())[1:]}, str(weights))
    if change.get("drop_file"):
        (adapter / change["drop_file"]).unlink()
    if change.get("corrupt"):
        weights.write_bytes(b"not safetensors")
    raw = grpo_config(finetune_config, quick_base, grpo_file, tmp_path / "o", init_adapter=str(adapter))
    if "lora" in change:
        raw["lora"] = change["lora"]
    cfg = grpo.parse_config(raw)
    with pytest.raises(JobConfigError, match=message):
        grpo.policy_model(load_base_model(str(quick_base), dtype=torch.float32, device=torch.device("cpu")), cfg,
                          resuming=False)  # fmt: skip
    with pytest.raises(JobConfigError, match="init_adapter must be str"):
        grpo.parse_config({**raw, "init_adapter": 3})


def test_resume_after_init_continues_the_champion(
    tmp_path: Path, quick_base: Path, grpo_file: Path, champion_adapter: Path,
    finetune_config: Callable[..., dict[str, Any]],
) -> None:  # fmt: skip
    """An uninterrupted run from the champion (checkpointing at step 2) and a resume from that checkpoint end
    with the same adapter: the resume does not reload the champion over its checkpoint."""
    from safetensors.torch import load_file

    def run(out: str, **kw: Any) -> dict[str, Any]:
        raw = grpo_config(finetune_config, quick_base, grpo_file, tmp_path / out, init_adapter=str(champion_adapter),
                          **kw)  # fmt: skip
        metrics, code = grpo.train(grpo.parse_config(raw))
        assert code == 0
        return metrics

    a = run("a", save_steps=2)
    c = run("c", resume_from=str(tmp_path / "a" / "checkpoints" / "step-2"))
    assert a["init_adapter"] == str(champion_adapter) and c["resumed_from_step"] == 2
    assert c["reward_curve"] == a["reward_curve"][2:]
    wa = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    wc = load_file(str(tmp_path / "c" / "adapter" / "adapter_model.safetensors"))
    champion = load_file(str(champion_adapter / "adapter_model.safetensors"))
    assert wa.keys() == wc.keys() == champion.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wc[k], rtol=1e-4, atol=1e-5)
    assert max(float((wa[k] - champion[k]).abs().max()) for k in wa) > 0  # it trained from there


def test_remote_entry_puts_the_init_adapter_under_the_work_directory(tmp_path: Path) -> None:
    from jobs.remote_entry import train_config

    config = {"train_file": "data/grpo.jsonl", "eval_file": None, "init_adapter": "init_adapter", "seed": 0}
    out = train_config(config, tmp_path, tmp_path / "output")
    assert out["init_adapter"] == str(tmp_path / "init_adapter") and out["eval_file"] is None
    assert out["train_file"] == str(tmp_path / "data/grpo.jsonl") and out["output_dir"] == str(tmp_path / "output")
    assert "init_adapter" not in train_config({"train_file": "t"}, tmp_path, tmp_path)

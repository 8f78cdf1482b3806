"""Round training under accelerate launch: rank-aware batches, 2 processes = 1 process, full fine-tuning, resume.

The ``multiprocess`` tests start ``accelerate launch`` with two CPU processes (gloo) on the tiny student.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from safetensors.torch import load_file

from conftest import REPO
from l2r_lib.config import StudentConfig, TrainConfig
from l2r_lib.records import save_jsonl
from l2r_lib.training.batches import QuestionBatchSampler, ReflectionCollator, ReflectionDataset, build_features
from l2r_lib.training.launcher import launch_command
from l2r_lib.training.trainer import build_student
from l2r_lib.student import load_trained_student
from l2r_lib.training import RoundInputs, read_losses, train_round
from test_training import kill_after_step, make_records, reflection_trainer

TINY = StudentConfig(name="tiny", chat=False)
LOSSES = ("mle", "triplet", "total", "d_pos", "d_neg")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def one_thread_per_worker(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the launched processes: 2 shared cores


# --- rank-aware batches -------------------------------------------------------------------------

def test_padded_batches_split_into_equal_rank_slices_covering_every_row_once():
    """With ``pad`` every batch is full, so accelerate's ``split_batches`` gives each of 2 processes
    an equal slice and drops nothing: a question appears once in a global batch, every row once an
    epoch across the ranks, and the fill is dummy rows (negative indices)."""
    counts = [5, 1, 1, 2, 3, 1, 4, 1, 1, 2]  # 21 rows: short batches in every epoch
    qids = [f"q{i}" for i, c in enumerate(counts) for _ in range(c)]
    sampler = QuestionBatchSampler(qids, batch_size=4, seed=3, pad=True)
    shards = [BatchSamplerShard(sampler, num_processes=2, process_index=r, split_batches=True) for r in (0, 1)]
    for epoch in range(3):
        sampler.set_epoch(epoch)
        unpadded = QuestionBatchSampler(qids, batch_size=4, seed=3)
        unpadded.set_epoch(epoch)
        short = [b for b in unpadded if len(b) < 4]
        assert short, "the case under test: some batches are short"
        slices = [list(s) for s in shards]
        assert len(slices[0]) == len(slices[1]) == len(sampler)
        real = []
        for a, b in zip(*slices):
            assert len(a) == len(b) == 2
            rows = [i for i in a + b if i >= 0]
            assert len({qids[i % len(qids)] for i in rows}) == len(rows)  # no question twice in a global batch
            assert all(-1 - i in rows for i in a + b if i < 0)  # a dummy copies a row of its own batch
            real += rows
        assert sorted(real) == list(range(epoch * len(qids), (epoch + 1) * len(qids)))  # every row once


def test_dummy_rows_carry_no_loss_and_no_gradient(tmp_path):
    from l2r_lib.student import load_tokenizer

    tokenizer = load_tokenizer("tiny")
    teacher, exams = make_records(4)
    cfg = TrainConfig(batch_size=4, lora_dropout=0.0)
    model, _ = build_student(TINY, cfg)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    feats = build_features(teacher, exams, tokenizer, cfg, TINY, round_idx=1)
    data = ReflectionDataset(feats)
    dummy = data[-1 - 2]
    assert dummy["dummy"] and dummy["target_ids"] == data[2]["target_ids"]
    collate = ReflectionCollator(tokenizer.pad_token_id)
    plain, padded = collate([data[0], data[2]]), collate([data[0], data[2], dummy, dummy])
    assert (padded["labels"][2:] == -100).all() and padded["triplet_rows"].tolist() == plain["triplet_rows"].tolist()
    trainer = reflection_trainer(tmp_path, feats, cfg, model)
    results = []
    for batch in (plain, padded):
        model.zero_grad()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_processes_default_to_the_visible_gpus(monkeypatch):
    """No train.processes: one per visible GPU (a shipped accelerate config's own count never
    decides, see launch_command), 1 on a machine without."""
    from l2r_lib import config

    assert TrainConfig().processes == 1 and config.visible_gpus() == torch.cuda.device_count()
    monkeypatch.setattr(config, "visible_gpus", lambda: 8)
    assert TrainConfig().processes == 8 and TrainConfig(processes=2).processes == 2
    paper = config.load_config(REPO / "params" / "paper" / "full-ft" / "gsm8k.yaml").train
    assert paper.processes == 8
    monkeypatch.setattr(config, "visible_gpus", lambda: 1)
    paper = config.load_config(REPO / "params" / "paper" / "full-ft" / "gsm8k.yaml").train
    assert paper.processes == 1 and "--num_processes" in (cmd := launch_command(paper, Path("spec.json")))
    assert cmd[cmd.index("--num_processes") + 1] == "1"


def test_processes_must_divide_the_batch():
    with pytest.raises(ValueError, match=r"train\.batch_size = 6: must be a multiple of train\.processes = 4"):
        TrainConfig(batch_size=6, processes=4)
    with pytest.raises(ValueError, match=r"train\.peft"):
        TrainConfig(peft="qlora")


# --- several processes ----------------------------------------------------------------------------

@pytest.mark.floor
@pytest.mark.multiprocess
@pytest.mark.parametrize("reflection,peft", [(True, "lora"), (False, "lora"), (True, "none")],
                         ids=["reflection", "no-reflection", "full-ft"])
def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path, reflection, peft):
    """5 questions x 2 rows, global batches of 4 (the last of each epoch short: padded for 2
    processes): every step's losses and the final weights agree with one process (DDP over gloo)."""
    teacher, exams = make_records(5)
    results = {}
    for processes in (1, 2):
        cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2 if peft == "lora" else 1e-3, warmup_ratio=0.0,
                          lora_dropout=0.0, save_steps=0, processes=processes, peft=peft)
        results[processes] = train_round(RoundInputs(teacher, exams, cfg, TINY, tmp_path / f"p{processes}",
                                                     use_reflection=reflection))
    one, two = results[1], results[2]
    assert one.steps == two.steps == 6
    assert (tmp_path / "p2" / "launch" / "train.log").is_file() and not (tmp_path / "p1" / "launch").exists()
    rows1, rows2 = read_losses(one.losses_csv), read_losses(two.losses_csv)
    assert [r["step"] for r in rows2] == list(range(1, 7))
    for a, b in zip(rows1, rows2):
        for k in LOSSES:
            assert torch.allclose(torch.tensor(a[k]), torch.tensor(b[k]), rtol=1e-4, atol=1e-5, equal_nan=True), (k, a, b)
    assert (rows1[0]["triplet"] > 0) == reflection
    weights = "adapter_model.safetensors" if peft == "lora" else "model.safetensors"
    w1, w2 = load_file(one.adapter_dir / weights), load_file(two.adapter_dir / weights)
    assert w1.keys() == w2.keys()
    for k in w1:
        # Adam divides by sqrt(v): where a gradient is near zero, the ~1e-7 difference of another summation
        # order can move that weight by a sliver of a step (seen: 5.6e-5 on 1 of 1024, lr 1e-2); a wrong
        # share of the batch would move every weight by up to a whole step
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-3, atol=1e-4)
    if peft == "lora":
        assert any(w1[k].abs().sum() > 0 for k in w1 if "lora_B" in k)  # trained, not the zero init


FULL_FT = dict(epochs=3, batch_size=4, lr=1e-3, warmup_ratio=0.0, save_steps=2, save_total_limit=1, peft="none")
RUNNER = textwrap.dedent(f"""
    import sys
    from pathlib import Path
    from l2r_lib.config import StudentConfig, TrainConfig
    from l2r_lib.records import ExamRecord, TeacherRecord, load_jsonl
    from l2r_lib.training import RoundInputs, train_round
    d = Path(sys.argv[1])
    cfg = TrainConfig(**{FULL_FT!r}, processes=2, accelerate_config="deepspeed-zero3-offload")
    r = train_round(RoundInputs(load_jsonl(TeacherRecord, d / "teacher.jsonl"), load_jsonl(ExamRecord, d / "exam.jsonl"),
                                cfg, StudentConfig(name="tiny", chat=False, dtype="float32"), d / sys.argv[2]))
    print("RESULT", r.steps, r.resumed_from_step)
""")


@pytest.mark.multiprocess
@pytest.mark.deepspeed
def test_zero3_full_finetuning_on_two_processes_learns_and_resumes_after_a_kill(tmp_path):
    """``train.peft: none`` sharded by DeepSpeed ZeRO-3 (CPU offload) over 2 CPU processes (gloo): the
    loss goes down; killed after a checkpoint, the rerun continues from it; every step's losses and
    the final model agree with one unsharded process; the saved whole model loads for the exam."""
    pytest.importorskip("deepspeed")
    teacher, exams = make_records(6)  # 12 rows, batches of 4: 3 steps an epoch, 9 in all, a checkpoint every 2
    save_jsonl(teacher, tmp_path / "teacher.jsonl")
    save_jsonl(exams, tmp_path / "exam.jsonl")
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = lambda name: subprocess.Popen([sys.executable, str(tmp_path / "runner.py"), str(tmp_path), name],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                        start_new_session=True)  # its own process group: the kill takes the workers too

    killed = tmp_path / "killed"
    proc = run("killed")
    # a row for step 5: checkpoint-4 is complete; the first run compiles DeepSpeed's CPU Adam (minutes; then cached)
    kill_after_step(proc, killed / "losses.csv", 5, timeout=500, group=True)
    assert not (killed / "adapter").exists()
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] >= 4
    last = killed / "checkpoints" / f"checkpoint-{checkpoints[-1]}"
    shards = {p.name for p in next(last.glob("global_step*")).iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= shards  # ZeRO: one shard a process

    resumed = run("killed")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"RESULT 9 {checkpoints[-1]}" in out, out
    rows = read_losses(killed / "losses.csv")
    assert [r["step"] for r in rows] == list(range(1, 10))
    assert sum(r["mle"] for r in rows[-3:]) < sum(r["mle"] for r in rows[:3]) - 0.3  # the last epoch vs the first

    alone = train_round(RoundInputs(teacher, exams, TrainConfig(**FULL_FT), StudentConfig(name="tiny", chat=False, dtype="float32"),
                                    tmp_path / "alone"))
    for a, b in zip(rows, read_losses(alone.losses_csv)):  # the same batches and updates, after the resume too
        for k in LOSSES:
            assert torch.allclose(torch.tensor(a[k]), torch.tensor(b[k]), rtol=1e-4, atol=1e-5, equal_nan=True), (k, a, b)

    assert (killed / "adapter" / "config.json").is_file() and not (killed / "adapter" / "adapter_config.json").exists()
    sharded, single = load_file(killed / "adapter" / "model.safetensors"), load_file(alone.adapter_dir / "model.safetensors")
    assert sharded.keys() == single.keys()
    for k in sharded:  # gathered whole from the shards
        torch.testing.assert_close(sharded[k], single[k], rtol=1e-3, atol=1e-5)
    model, _ = load_trained_student(TINY, killed / "adapter")
    assert not hasattr(model, "peft_config")
    base, _ = build_student(TINY, TrainConfig(peft="none"))
    trained = dict(model.named_parameters())
    assert any(not torch.equal(p, trained[n]) for n, p in base.named_parameters())


@pytest.mark.multiprocess
def test_an_fsdp_config_without_gpus_is_a_clear_error(tmp_path):
    """accelerate shards (FSDP) only on GPUs; on CPUs it would quietly train unsharded: refused."""
    if torch.cuda.is_available():
        pytest.skip("GPUs here: FSDP would run")
    teacher, exams = make_records(2)
    cfg = TrainConfig(epochs=1, batch_size=2, peft="none", processes=2, accelerate_config="fsdp")
    with pytest.raises(RuntimeError, match="asks for FSDP.*FSDP only on GPUs; on CPUs use deepspeed-zero3-offload"):
        train_round(RoundInputs(teacher, exams, cfg, StudentConfig(name="tiny", chat=False, dtype="float32"), tmp_path / "round1"))


def test_shipped_accelerate_configs_load_and_resolve_by_name(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    from l2r_lib.training.launcher import CONFIGS_DIR, launch_command

    kinds = {p.stem: load_config_from_file(str(p)).distributed_type for p in CONFIGS_DIR.glob("*.yaml")}
    assert {k: str(v).split(".")[-1] for k, v in kinds.items()} == {"fsdp": "FSDP", "deepspeed-zero3-offload": "DEEPSPEED"}
    command = launch_command(TrainConfig(batch_size=8, processes=2, accelerate_config="fsdp"), tmp_path / "spec.json")
    assert command[command.index("--config_file") + 1] == str(CONFIGS_DIR / "fsdp.yaml")
    assert command[command.index("--num_processes") + 1] == "2" and command[-3:] == ["-m", "l2r_lib.training.launcher", str(tmp_path / "spec.json")]
    # one process (one GPU with ZeRO-3 offload) is one process, whatever the shipped file's 8 say
    one = launch_command(TrainConfig(accelerate_config="deepspeed-zero3-offload"), tmp_path / "spec.json")
    assert one[one.index("--num_processes") + 1] == "1"
    with pytest.raises(FileNotFoundError, match=r"train\.accelerate_config = 'fdsp'.*shipped: deepspeed-zero3-offload, fsdp"):
        launch_command(TrainConfig(accelerate_config="fdsp"), tmp_path / "spec.json")

"""The cores must actually learn: the NTM/DNC copy task on short sequences, fixed seed."""

import pytest
import torch

from sb3_memory.experiments.copy_task import BITS, bit_errors, copy_batch, train

SMALL_MEMORY = dict(controller_dim=32, memory_units=16, memory_unit_size=8)


def test_copy_batch_layout():
    inputs, targets = copy_batch(3, 4, torch.Generator().manual_seed(0))
    assert torch.equal(inputs[:4, :, :BITS], targets)  # the bits are shown first...
    assert torch.all(inputs[4, :, BITS] == 1) and torch.all(inputs[4, :, :BITS] == 0)  # ...then the delimiter
    assert torch.all(inputs[5:] == 0)  # and nothing while recalling


@pytest.mark.parametrize("core_name", ["ntm", "dnc"])
def test_memory_cores_learn_to_copy(core_name):
    model, curve = train(
        core_name, 1000, max_length=4, batch_size=32, learning_rate=1e-2, eval_every=1000, log=lambda _: None, **SMALL_MEMORY
    )
    # An untrained model gets about 10 of the 32 bits wrong; a memorising one almost none.
    assert curve[-1][1] < 0.5
    assert bit_errors(model, 4, 256, torch.Generator().manual_seed(5)) < 0.5


def test_curriculum_stage_trains_the_given_model():
    model, _ = train("dnc", 2, max_length=3, eval_every=2, log=lambda _: None, **SMALL_MEMORY)
    before = bit_errors(model, 3, 64, torch.Generator().manual_seed(1))
    weights = [p.detach().clone() for p in model.parameters()]
    # A learning rate of 0 leaves a reused model as it was; a model built anew would differ.
    again, _ = train("dnc", 1, max_length=6, learning_rate=0.0, eval_every=1, log=lambda _: None, model=model)
    assert again is model
    assert all(torch.equal(w, p) for w, p in zip(weights, again.parameters()))
    assert bit_errors(again, 3, 64, torch.Generator().manual_seed(1)) == before


def test_stages_need_one_step_count_each(monkeypatch, capsys):
    from sb3_memory.experiments import copy_task

    monkeypatch.setattr("sys.argv", ["copy_task", "--max-length", "20", "100", "--steps", "10"])
    with pytest.raises(SystemExit):
        copy_task.main()
    assert "--steps has 1 values and --max-length 2" in capsys.readouterr().err

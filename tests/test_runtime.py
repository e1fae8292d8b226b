import numpy as np
import pytest
import torch

import flowcourse


def test_setup_makes_runs_repeatable():
    flowcourse.setup(seed=3)
    a = (torch.randn(3), np.random.rand(3))
    flowcourse.setup(seed=3)
    b = (torch.randn(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    flowcourse.setup(seed=4)
    assert not torch.equal(torch.randn(3), a[0])


def test_setup_fixes_threads_and_returns_a_seeded_generator():
    g = flowcourse.setup(seed=5, threads=1)
    assert torch.get_num_threads() == 1
    assert torch.equal(
        torch.randn(2, generator=g), torch.randn(2, generator=torch.Generator().manual_seed(5))
    )


@pytest.mark.parametrize("seed", [1.5, "0", None, True])
def test_setup_rejects_a_non_integer_seed(seed):
    with pytest.raises(TypeError, match="expects an integer"):
        flowcourse.setup(seed=seed)


@pytest.mark.parametrize("threads", [0, -2])
def test_setup_rejects_fewer_than_one_thread(threads):
    with pytest.raises(ValueError, match=">= 1"):
        flowcourse.setup(threads=threads)


def test_doctor_reports_ready_here_and_fails_on_a_missing_module(monkeypatch, capsys):
    from flowcourse import doctor

    assert doctor.main() == 0
    assert "ready" in capsys.readouterr().out
    monkeypatch.setitem(doctor.NOTEBOOK_MODULES, "not_a_module_xyz", "not-a-module-xyz")
    assert doctor.main() == 1
    out = capsys.readouterr().out
    assert "cannot import not_a_module_xyz" in out

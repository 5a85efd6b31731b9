"""The dataset policy of the test run: skip with the remedies, count the skips, fail in CI."""
import pytest

import data_policy


@pytest.fixture
def nothing_here(monkeypatch):
    """Pretend no dataset has a local copy and no download host answers."""
    import course_utils as cu
    monkeypatch.setattr(cu.data, "local_copy", lambda name, split: None)
    monkeypatch.setattr(data_policy, "_reachable", lambda host: False)
    data_policy.missing_dataset_reason.cache_clear()
    yield
    data_policy.missing_dataset_reason.cache_clear()


def test_the_reason_names_the_three_remedies(nothing_here):
    reason = data_policy.missing_dataset_reason("fashion-mnist", "test")
    assert reason.startswith("no dataset: fashion-mnist/test has no local copy")
    assert "$COURSE_DATA_DIR/fashion-mnist/test.npz" in reason and "apt-get install dataset-fashion-mnist" in reason
    assert "network connection" in reason
    assert "apt-get" not in data_policy.missing_dataset_reason("cifar10", "test")  # no Debian package for it


def test_skips_outside_ci_and_fails_in_ci(nothing_here, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no dataset: cifar10"):
        data_policy.require_dataset("cifar10")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no dataset: cifar10"):
        data_policy.require_dataset("cifar10")


def test_a_present_dataset_is_not_skipped(monkeypatch, tmp_path):
    import course_utils as cu
    monkeypatch.setattr(cu.data, "local_copy", lambda name, split: tmp_path)
    data_policy.missing_dataset_reason.cache_clear()
    try:
        data_policy.require_dataset("cifar10")  # returns quietly
    finally:
        data_policy.missing_dataset_reason.cache_clear()


def test_the_run_ends_with_a_count_of_data_skips(pytester):
    """The repository's conftest.py, in a small pytest session: only the data skip is counted."""
    from pathlib import Path
    tests = Path(__file__).resolve().parent
    source = (tests.parent / "conftest.py").read_text().replace('pytest_plugins = ("pytester",)', "")
    pytester.makeconftest(source.replace('Path(__file__).resolve().parent / "tests"', repr(str(tests))))
    pytester.makepyfile(test_inner="""
        import pytest
        def test_needs_data():
            pytest.skip("no dataset: cifar10/test has no local copy")
        def test_other():
            pytest.skip("needs a CUDA GPU")
        def test_fine():
            pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["1 test(s) skipped for lack of data*three remedies*"])

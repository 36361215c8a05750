"""`lmstream train` starts without the cyclic collector walking its imports again and again
(lmstream.collector): six full collections took 0.9 s of a small CPU run's start-up."""

from __future__ import annotations

from tests.support.process_runs import (
    OFFLINE_ENV,
    assert_trained_to,
    run_train,
    with_sitecustomize,
)
from tests.support.training import kjv_corpus_fixture, tiny_training_config, write_run

corpus = kjv_corpus_fixture(60, 300)

# Loaded by the child interpreter at start (sitecustomize): counts the collector's full passes,
# automatic or asked for, and writes the count when the process ends.
COUNTER = """
import atexit, gc, os
full = [0]
gc.callbacks.append(lambda phase, info: phase == "start" and info["generation"] == 2
                    and full.__setitem__(0, full[0] + 1))
atexit.register(lambda: open(os.environ["FULL_COLLECTIONS_FILE"], "a").write(f"{full[0]}\\n"))
"""


def test_a_training_run_makes_at_most_two_full_collections(corpus, tmp_path):
    """One when start-up ends (what the build left), one at exit (lmstream.process_exit);
    with the collector running through the imports, there were six more."""
    counts = tmp_path / "full-collections.txt"
    run = tmp_path / "run"
    config = write_run(run, tiny_training_config(corpus, 4, **{"data.num_workers": 2}))
    env = with_sitecustomize(
        {**OFFLINE_ENV, "FULL_COLLECTIONS_FILE": str(counts)}, tmp_path / "site", COUNTER
    )
    done = run_train(config, env)
    assert done.returncode == 0, done.stderr
    assert_trained_to(run, 4)
    # The rank writes its count at exit; loader workers end without atexit handlers.
    assert [int(n) for n in counts.read_text().split()] in ([1], [2]), counts.read_text()

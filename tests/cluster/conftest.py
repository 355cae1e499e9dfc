"""A real single-node Slurm for the tests marked `slurm` (tests/cluster/slurm_cluster.py).

It needs Debian's slurmctld, slurmd, slurm-client and munge (.ci/run installs them where
it is root with apt-get) and root, since the daemons run as SlurmUser=root; elsewhere
the tests are skipped with the reason.
"""

from __future__ import annotations

import os

import pytest

from tests.cluster.slurm_cluster import SlurmCluster, missing_programs


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    missing = missing_programs()
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing; Debian: "
                    "apt-get install slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        pytest.skip("the test Slurm runs its daemons as SlurmUser=root, which needs root")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    patch = pytest.MonkeyPatch()
    try:
        cluster.start()
        # Every Slurm command (TorchX's, the tests') and every job finds this cluster.
        for key, value in cluster.env().items():
            patch.setenv(key, value)
        yield cluster
    finally:
        patch.undo()
        cluster.stop()

"""mlpdeploy's model zoo (installed as `mlpdeploy.zoo`): one module per architecture. The index of
names (one registration line per model) is `mlpdeploy.model.zoo`, re-exported here."""

from mlpdeploy.model.zoo import ZOO, ZooEntry, get  # noqa: F401

"""Speculative decoding: drafters propose tokens, one step of the model verifies them.

Public API:
    make_drafter(mode, engine), parse_mode(mode)     `--speculative MODE` → a Drafter (modes.py)
    Drafter, DraftRun, Drafts, Verified, DraftLength the drafter interface and adaptive draft length (base.py)
    speculative_generate                             the verify loop (loop.py); CachedGenerator(engine, drafter) calls it
    NgramDrafter, HeadsDrafter, ModelDrafter         the drafters (ngram.py, heads.py, model.py; self_draft.py builds self:PLAN's)
"""

from mlpdeploy.runtime.speculative.base import Drafter, DraftLength, DraftRun, Drafts, Verified  # noqa: F401
from mlpdeploy.runtime.speculative.heads import HeadsDrafter  # noqa: F401
from mlpdeploy.runtime.speculative.loop import speculative_generate  # noqa: F401
from mlpdeploy.runtime.speculative.model import ModelDrafter  # noqa: F401
from mlpdeploy.runtime.speculative.modes import MODES, make_drafter, parse_mode, session_entries  # noqa: F401
from mlpdeploy.runtime.speculative.ngram import NgramDrafter  # noqa: F401

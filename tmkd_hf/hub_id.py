"""What a Hugging Face Hub model id looks like: one pattern for every place that tells a Hub id from a local path
(`tmkd_hf.teachers` checks locations with it, `tmkd_hf.modeling` finds multi-head students on the Hub with it)."""

from __future__ import annotations

import re

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # "name" or "namespace/name"

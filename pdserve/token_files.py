"""Settings that read bearer tokens from files (Kubernetes Secrets mounted as files), for the
service configs that take tokens: mixed into `pdserve up`'s, the router's and the worker's.

`<token>_file` is read (whitespace stripped) into `<token>` before validation; giving both is
refused, naming the token field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from pdserve.auth import token_from_file


class InternalTokenFile(BaseModel):
    internal_auth_token_file: Path | None = Field(
        None, description="File holding internal_auth_token (instead of giving it)."
    )

    @model_validator(mode="before")
    @classmethod
    def _internal_token_from_file(cls, data: Any) -> Any:
        return token_from_file(data, "internal_auth_token", "internal_auth_token_file")


class TokenFiles(InternalTokenFile):
    auth_token_file: Path | None = Field(
        None, description="File holding auth_token (instead of giving it)."
    )

    @model_validator(mode="before")
    @classmethod
    def _public_token_from_file(cls, data: Any) -> Any:
        return token_from_file(data, "auth_token", "auth_token_file")

"""S3: the only module that reads, writes or deletes objects (offloaded values).

A payload, step result, token value or output whose JSON is larger than
``serde.INLINE_VALUE_BYTES`` is stored as an object of the stack's payload bucket, and
its item holds a pointer (``{"M": {"s3": key, "bytes": n}}``) where the JSON string
would be (docs/payloads.md). Objects are content-addressed under their run:
``runs/<run id>/<sha-256 of the JSON>.json``. The same value written twice under one
run (a token's value, then the checkpoint of the wait that took it) is one object,
and an object never changes once written, so what this process has read or written
is cached by key without any check of freshness.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from rung.errors import PayloadTooLarge, RungError

log = logging.getLogger("rung.worker")

#: The key prefix of a run's objects.
PREFIX = "runs/"
#: How many bytes of values the process keeps for reads again (a replay reads every
#: checkpoint of a run each attempt).
CACHE_BYTES = 64 * 1024 * 1024
#: DeleteObjects takes at most this many keys.
_DELETE_BATCH = 1000


class Blobs:
    """The payload bucket: offloaded values put, read and deleted.

    ``client``: an S3 client; ``bucket``: the stack's ``PayloadBucketName`` output.
    Thread-safe (boto3 clients are; the cache has a lock).
    """

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        #: requests made, by operation (bench/api_calls.py reads it)
        self.requests: dict[str, int] = {
            "PutObject": 0,
            "GetObject": 0,
            "ListObjectsV2": 0,
            "DeleteObjects": 0,
        }

    @staticmethod
    def key_of(run_id: str, text: str) -> str:
        """The key ``text`` is stored under for ``run_id``."""
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return f"{PREFIX}{run_id}/{digest}.json"

    def put(self, run_id: str, text: str) -> str:
        """Store ``text`` (once per process and key); returns its key."""
        key = self.key_of(run_id, text)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return key
        self._count("PutObject")
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=text.encode("utf-8"),
            ContentType="application/json",
            ServerSideEncryption="AES256",
        )
        self._remember(key, text)
        return key

    def get(self, key: str) -> str:
        """The JSON stored under ``key``.

        Raises:
            ValueNotFound: the object is missing (deleted with its run, or the bucket is
                not the one the value was written to).
        """
        with self._lock:
            text = self._cache.get(key)
            if text is not None:
                self._cache.move_to_end(key)
                return text
        self._count("GetObject")
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            text = str(body.read().decode("utf-8"))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NoSuchBucket", "AccessDenied"):
                raise ValueNotFound(
                    f"the offloaded value s3://{self.bucket}/{key} cannot be read ({code}): a "
                    "run's values are deleted with it when its retention ends "
                    "(docs/retention.md); else check that this client reads the stack's bucket "
                    "(bucket= or RUNG_PAYLOAD_BUCKET against the stack output PayloadBucketName) "
                    "and may s3:GetObject under runs/ (docs/deploying.md)"
                ) from None
            raise
        self._remember(key, text)
        return text

    def delete_run(self, run_id: str) -> int:
        """Delete every object of ``run_id`` (its values, and any a crashed attempt
        left); returns how many. One list request per 1,000 objects, one delete each.
        A refusal (access denied, the bucket gone) is logged, not raised: the run's items
        are deleted already, and the sweep goes on with the other runs."""
        keys: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{PREFIX}{run_id}/"):
                self._count("ListObjectsV2")
                keys += [o["Key"] for o in page.get("Contents", [])]
            return self._delete(keys)
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "rung: the objects of swept run %s could not be deleted (%s): check that the "
                "reconciler may s3:ListBucket and s3:DeleteObject under runs/ of bucket %s "
                "(template.yaml's ReconcilerRole); delete s3://%s/runs/%s/ by hand",
                run_id,
                exc,
                self.bucket,
                self.bucket,
                run_id,
            )
            return 0

    def _delete(self, keys: list[str]) -> int:
        deleted = 0
        for start in range(0, len(keys), _DELETE_BATCH):
            chunk = keys[start : start + _DELETE_BATCH]
            self._count("DeleteObjects")
            out = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
            )
            errors = out.get("Errors", [])
            if errors:
                log.warning(
                    "rung: %d of the %d objects of a swept run were not deleted (%s): they "
                    "stay in the bucket until deleted by hand",
                    len(errors),
                    len(chunk),
                    errors[0].get("Message", errors[0].get("Code")),
                )
            deleted += len(chunk) - len(errors)
            with self._lock:
                for key in chunk:
                    text = self._cache.pop(key, None)
                    if text is not None:
                        self._cached_bytes -= _size(text)
        return deleted

    @classmethod
    def created(cls, client: Any, bucket: str) -> Blobs:
        """A new bucket on an emulator (LocalEngine's; template.yaml makes the stack's)."""
        client.create_bucket(Bucket=bucket)
        return cls(client, bucket)

    def drop(self) -> None:
        """Delete the bucket and everything in it (an emulator's, when its engine stops)."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket):
            self._delete([o["Key"] for o in page.get("Contents", [])])
        self.client.delete_bucket(Bucket=self.bucket)

    def _count(self, operation: str) -> None:
        with self._lock:
            self.requests[operation] += 1

    def _remember(self, key: str, text: str) -> None:
        size = _size(text)
        if size > CACHE_BYTES // 4:
            return
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = text
            self._cached_bytes += size
            while self._cached_bytes > CACHE_BYTES and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= _size(old)


def _size(text: str) -> int:
    """What a cached string costs in memory, about (CPython keeps 1 to 4 bytes a char)."""
    return len(text) * (1 if text.isascii() else 4)


class ValueNotFound(RungError, LookupError):
    """An offloaded value's object is missing."""


def no_bucket(what: str, size: int, inline: int) -> PayloadTooLarge:
    """The error for a value over the inline limit where no bucket is configured."""
    return PayloadTooLarge(
        f"{what} is {size:,} bytes of JSON; without a payload bucket rung stores at most "
        f"{inline:,} bytes inline. Values up to 10 MiB go to the stack's S3 bucket: pass "
        "bucket= (stack output PayloadBucketName) to rung.Client, set RUNG_PAYLOAD_BUCKET, "
        "or use rung.Client.from_stack"
    )

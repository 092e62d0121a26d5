"""KV types to and from the internal protobuf messages (torch-free; used by both workers)."""

from __future__ import annotations

from kv_transfer.pages import KVHandle, KVLayout, TransportBackend
from pdserve.v1 import worker_pb2


def layout_to_proto(layout: KVLayout) -> worker_pb2.KVLayout:
    return worker_pb2.KVLayout(
        num_layers=layout.num_layers,
        num_kv_heads=layout.num_kv_heads,
        head_dim=layout.head_dim,
        page_size=layout.page_size,
        dtype=layout.dtype,
    )


def layout_from_proto(msg: worker_pb2.KVLayout) -> KVLayout:
    return KVLayout(msg.num_layers, msg.num_kv_heads, msg.head_dim, msg.page_size, msg.dtype)


def handle_to_proto(handle: KVHandle) -> worker_pb2.KVHandle:
    return worker_pb2.KVHandle(
        transfer_id=handle.transfer_id,
        src_worker_id=handle.src_worker_id,
        src_epoch=handle.src_epoch,
        page_ids=handle.page_ids,
        num_tokens=handle.num_tokens,
        layout=layout_to_proto(handle.layout),
        lease_expiry_unix_s=handle.lease_expiry_unix_s,
        backend=handle.backend.value,
        locator=handle.locator,
        checksum=handle.checksum,
    )


def handle_from_proto(msg: worker_pb2.KVHandle) -> KVHandle:
    """Raises ValueError when a field is out of range (e.g. an unknown backend)."""
    return KVHandle(
        transfer_id=msg.transfer_id,
        src_worker_id=msg.src_worker_id,
        src_epoch=msg.src_epoch,
        page_ids=tuple(msg.page_ids),
        num_tokens=msg.num_tokens,
        layout=layout_from_proto(msg.layout),
        lease_expiry_unix_s=msg.lease_expiry_unix_s,
        backend=TransportBackend(msg.backend),
        locator=msg.locator,
        checksum=msg.checksum,
    )

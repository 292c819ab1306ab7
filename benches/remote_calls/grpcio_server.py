"""A plain grpcio server of jac.splice.v1.ModuleService for bench_mod (sqrt and echo of arrays).

Usage: python grpcio_server.py GENERATED_DIR PORT
"""

import sys
from concurrent import futures

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from jac.splice.v1 import module_pb2, module_pb2_grpc, value_pb2  # noqa: E402

import bench_mod  # noqa: E402


def to_value(x):
    if isinstance(x, float):
        return value_pb2.Value(float_value=x)
    a = np.ascontiguousarray(x)
    return value_pb2.Value(
        ndarray=value_pb2.NdArray(dtype=a.dtype.str, shape=a.shape, data=a.tobytes())
    )


def from_value(v):
    if v.HasField("ndarray"):
        n = v.ndarray
        return np.frombuffer(n.data, n.dtype).reshape(tuple(n.shape))
    return v.float_value


class Service(module_pb2_grpc.ModuleServiceServicer):
    def Call(self, request, context):
        fn = getattr(bench_mod, request.path[0])
        result = fn(*[from_value(a) for a in request.args])
        return module_pb2.ValueResponse(value=to_value(result))


limit = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=limit)
module_pb2_grpc.add_ModuleServiceServicer_to_server(Service(), server)
server.add_insecure_port(f"127.0.0.1:{sys.argv[2]}")
server.start()
print("ready", flush=True)
server.wait_for_termination()

import sys, grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

channel = grpc.insecure_channel(sys.argv[1] if len(sys.argv) > 1 else "localhost:50051")
pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))  # the messages, by reflection
Request, Response = (message_factory.GetMessageClass(pool.FindMessageTypeByName(f"embedder.{name}")) for name in ("EmbedRequest", "EmbedResponse"))
embed = channel.unary_unary("/embedder.Embedder/Embed", request_serializer=Request.SerializeToString, response_deserializer=Response.FromString)
reply = embed(Request(texts=["restart a crashed worker", "a worker outlives its host"]), timeout=10, metadata=[("tenant", "docs")])
print(len(reply.vectors), "vectors of", len(reply.vectors[0].values), "dimensions")

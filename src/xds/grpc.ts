import * as grpc from "@grpc/grpc-js";
import type {
  DeltaDiscoveryRequest,
  DeltaDiscoveryResponse,
  IstioCertificateRequest,
  IstioCertificateResponse,
} from "./messages.js";
import {
  decodeDeltaDiscoveryRequest,
  decodeDeltaDiscoveryResponse,
  decodeIstioCertificateRequest,
  decodeIstioCertificateResponse,
  encodeDeltaDiscoveryRequest,
  encodeDeltaDiscoveryResponse,
  encodeIstioCertificateRequest,
  encodeIstioCertificateResponse,
} from "./proto.js";

// gRPC service definitions for delta ADS and the Istio CA, with src/xds/proto.ts's codecs as the
// (de)serializers, so neither side needs @grpc/proto-loader. Method names and paths are upstream's.

export const ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService";
export const ADS_METHOD_PATH = `/${ADS_SERVICE}/DeltaAggregatedResources`;
export const CA_SERVICE = "istio.v1.auth.IstioCertificateService";
export const CA_METHOD_PATH = `/${CA_SERVICE}/CreateCertificate`;

/** Istio's limit on one xDS message; a full snapshot of a large mesh is one response. */
export const MAX_MESSAGE_BYTES = 200 * 1024 * 1024;

/** Channel (and server) options every offmesh xDS/CA endpoint uses. */
export const XDS_CHANNEL_OPTIONS: grpc.ChannelOptions = {
  "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
  "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
};

/** grpc-js writes serialized messages as Buffers; this wraps the same memory without copying. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export interface AdsServiceImplementation extends grpc.UntypedServiceImplementation {
  DeltaAggregatedResources: grpc.handleBidiStreamingCall<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;
}

export const adsServiceDefinition: grpc.ServiceDefinition<AdsServiceImplementation> = {
  DeltaAggregatedResources: {
    path: ADS_METHOD_PATH,
    requestStream: true,
    responseStream: true,
    requestSerialize: (request: DeltaDiscoveryRequest) => asBuffer(encodeDeltaDiscoveryRequest(request)),
    requestDeserialize: (bytes: Buffer) => decodeDeltaDiscoveryRequest(bytes),
    responseSerialize: (response: DeltaDiscoveryResponse) => asBuffer(encodeDeltaDiscoveryResponse(response)),
    responseDeserialize: (bytes: Buffer) => decodeDeltaDiscoveryResponse(bytes),
    originalName: "deltaAggregatedResources",
  },
};

export interface CaServiceImplementation extends grpc.UntypedServiceImplementation {
  CreateCertificate: grpc.handleUnaryCall<IstioCertificateRequest, IstioCertificateResponse>;
}

export const caServiceDefinition: grpc.ServiceDefinition<CaServiceImplementation> = {
  CreateCertificate: {
    path: CA_METHOD_PATH,
    requestStream: false,
    responseStream: false,
    requestSerialize: (request: IstioCertificateRequest) => asBuffer(encodeIstioCertificateRequest(request)),
    requestDeserialize: (bytes: Buffer) => decodeIstioCertificateRequest(bytes),
    responseSerialize: (response: IstioCertificateResponse) =>
      asBuffer(encodeIstioCertificateResponse(response)),
    responseDeserialize: (bytes: Buffer) => decodeIstioCertificateResponse(bytes),
    originalName: "createCertificate",
  },
};

export interface AdsClient extends grpc.Client {
  DeltaAggregatedResources(
    metadata?: grpc.Metadata,
    options?: grpc.CallOptions,
  ): grpc.ClientDuplexStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;
}

export interface CaClient extends grpc.Client {
  CreateCertificate(
    request: IstioCertificateRequest,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: grpc.requestCallback<IstioCertificateResponse>,
  ): grpc.ClientUnaryCall;
}

const AdsClientConstructor = grpc.makeGenericClientConstructor(adsServiceDefinition, ADS_SERVICE);
const CaClientConstructor = grpc.makeGenericClientConstructor(caServiceDefinition, CA_SERVICE);

/** A delta ADS client channel to `target` (host:port); `options` add to XDS_CHANNEL_OPTIONS. */
export function createAdsClient(
  target: string,
  credentials: grpc.ChannelCredentials,
  options: grpc.ChannelOptions = {},
): AdsClient {
  // makeGenericClientConstructor adds the methods at run time; its type only knows Function.
  return new AdsClientConstructor(target, credentials, {
    ...XDS_CHANNEL_OPTIONS,
    ...options,
  }) as unknown as AdsClient;
}

/** An Istio CA client channel to `target` (host:port); `options` add to XDS_CHANNEL_OPTIONS. */
export function createCaClient(
  target: string,
  credentials: grpc.ChannelCredentials,
  options: grpc.ChannelOptions = {},
): CaClient {
  return new CaClientConstructor(target, credentials, {
    ...XDS_CHANNEL_OPTIONS,
    ...options,
  }) as unknown as CaClient;
}

/** One CreateCertificate call as a promise; rejects with grpc-js's ServiceError. */
export function createCertificate(
  client: CaClient,
  request: IstioCertificateRequest,
  metadata: grpc.Metadata = new grpc.Metadata(),
  options: grpc.CallOptions = {},
): Promise<IstioCertificateResponse> {
  return new Promise((resolve, reject) => {
    client.CreateCertificate(request, metadata, options, (err, response) => {
      if (err !== null) reject(err);
      else if (response === undefined)
        reject(new Error(`${CA_METHOD_PATH} answered neither a response nor an error`));
      else resolve(response);
    });
  });
}

// The meter's signing interface (../meter/meter_sign.h) on the host: Debian's libsecp256k1
// (libsecp256k1-dev; link with -lsecp256k1). Keys come from /dev/urandom.
#include <secp256k1.h>
#include <secp256k1_recovery.h>

#include <cstdio>

#include "meter_sign.h"

uint32_t harnessSignatures = 0;  // signatures made since start, reported by "#stats"

static secp256k1_context *context() {
  static secp256k1_context *shared = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
  return shared;
}

bool meterKeyGenerate(uint8_t privateKey[32]) {
  FILE *random = fopen("/dev/urandom", "rb");
  if (random == nullptr) return false;
  bool ok = false;
  while (!ok && fread(privateKey, 1, 32, random) == 32) {
    ok = secp256k1_ec_seckey_verify(context(), privateKey) == 1;
  }
  fclose(random);
  return ok;
}

bool meterPublicKey(const uint8_t privateKey[32], uint8_t publicKey[64]) {
  secp256k1_pubkey key;
  if (!secp256k1_ec_pubkey_create(context(), &key, privateKey)) return false;
  uint8_t serialized[65];
  size_t length = sizeof serialized;
  secp256k1_ec_pubkey_serialize(context(), serialized, &length, &key, SECP256K1_EC_UNCOMPRESSED);
  for (int i = 0; i < 64; i++) publicKey[i] = serialized[i + 1];  // drop the 0x04 prefix
  return true;
}

bool meterSign(const uint8_t privateKey[32], const uint8_t digest[32], uint8_t signature[65]) {
  secp256k1_ecdsa_recoverable_signature sig;
  // nullptr nonce function: RFC 6979 with HMAC-SHA256; libsecp256k1 always produces low s.
  if (!secp256k1_ecdsa_sign_recoverable(context(), &sig, digest, privateKey, nullptr, nullptr)) {
    return false;
  }
  int recoveryId = 0;
  secp256k1_ecdsa_recoverable_signature_serialize_compact(context(), signature, &recoveryId, &sig);
  signature[64] = (uint8_t)(27 + recoveryId);
  harnessSignatures++;
  return true;
}

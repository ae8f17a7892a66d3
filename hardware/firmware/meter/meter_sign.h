// The meter's signing interface: the only code that touches its private key's arithmetic.
// On the device (ARDUINO defined) meter_sign_uecc.cpp implements it with micro-ecc; in the host
// harness, ../host/meter_sign_secp256k1.cpp implements it with libsecp256k1. Both return
// Ethereum signatures: r || s || v, v = 27 or 28, s in the lower half of the group order.
#pragma once

#include <stdint.h>

// A new private key from the board's hardware random generator; false if there is none.
bool meterKeyGenerate(uint8_t privateKey[32]);

// The uncompressed public key x || y (64 bytes, big-endian); false if the key is invalid.
bool meterPublicKey(const uint8_t privateKey[32], uint8_t publicKey[64]);

// Signs a 32-byte digest deterministically (RFC 6979); false if signing failed.
bool meterSign(const uint8_t privateKey[32], const uint8_t digest[32], uint8_t signature[65]);

// The meter's signing interface (meter_sign.h) on the device, with micro-ecc 1.x (Arduino
// Library Manager: "micro-ecc") on secp256k1 and SHA-256 from the "Crypto" library for the
// RFC 6979 nonce. Only compiled for a board (ARDUINO defined): micro-ecc cannot be installed on
// the build machines, so CI builds the host harness (../host) with libsecp256k1 instead and this
// file is not compiled there.
//
// micro-ecc gives r || s without the recovery bit and without normalising s, so this file
// computes R = (e/s) G + (r/s) Q once more to learn the parity of R.y, then makes s low (which
// flips the parity). That needs micro-ecc's VLI API: build the library with
// uECC_ENABLE_VLI_API=1, e.g. arduino-cli compile --build-property
// "compiler.c.extra_flags=-DuECC_ENABLE_VLI_API=1" --build-property
// "compiler.cpp.extra_flags=-DuECC_ENABLE_VLI_API=1".
#ifdef ARDUINO

#include <Arduino.h>
#include <SHA256.h>
#include <uECC.h>
#include <uECC_vli.h>
#include <string.h>

#include "meter_sign.h"

#if !uECC_ENABLE_VLI_API
#error "build micro-ecc with uECC_ENABLE_VLI_API=1 (see the comment at the top of this file)"
#endif
#if !uECC_SUPPORTS_secp256k1
#error "build micro-ecc with secp256k1 support (uECC_SUPPORTS_secp256k1=1)"
#endif

static const unsigned WORDS = 32 / sizeof(uECC_word_t);

// ---- Entropy: only boards with a hardware random generator can make a key -------------------
static int hardwareRandom(uint8_t *dest, unsigned size) {
#if defined(ARDUINO_ARCH_ESP32)
  while (size > 0) {  // true random while the radio or the bootloader's entropy source runs
    uint32_t word = esp_random();
    for (uint8_t i = 0; i < 4 && size > 0; i++, size--) *dest++ = (uint8_t)(word >> (8 * i));
  }
  return 1;
#elif defined(ARDUINO_ARCH_RP2040)
  while (size > 0) {  // arduino-pico: bits of the ring oscillator
    uint32_t word = rp2040.hwrand32();
    for (uint8_t i = 0; i < 4 && size > 0; i++, size--) *dest++ = (uint8_t)(word >> (8 * i));
  }
  return 1;
#else
  (void)dest;
  (void)size;
  return 0;  // e.g. an ATmega328P: no hardware random generator, so no key is made
#endif
}

bool meterKeyGenerate(uint8_t privateKey[32]) {
  uint8_t publicKey[64];
  uECC_set_rng(&hardwareRandom);
  return uECC_make_key(publicKey, privateKey, uECC_secp256k1()) == 1;
}

bool meterPublicKey(const uint8_t privateKey[32], uint8_t publicKey[64]) {
  return uECC_compute_public_key(privateKey, publicKey, uECC_secp256k1()) == 1;
}

// ---- SHA-256 for uECC_sign_deterministic ------------------------------------------------------
static SHA256 sha256;
static void initHash(const uECC_HashContext *) { sha256.reset(); }
static void updateHash(const uECC_HashContext *, const uint8_t *message, unsigned size) {
  sha256.update(message, size);
}
static void finishHash(const uECC_HashContext *, uint8_t *result) { sha256.finalize(result, 32); }

// ---- Recovery parity: R = u1 G + u2 Q, affine addition modulo p -------------------------------
static int recoveryParity(const uint8_t publicKey[64], const uint8_t digest[32],
                          const uint8_t signature[64], uECC_Curve curve) {
  const uECC_word_t *n = uECC_curve_n(curve);
  const uECC_word_t *p = uECC_curve_p(curve);
  uECC_word_t r[WORDS], s[WORDS], e[WORDS], w[WORDS], u1[WORDS], u2[WORDS];
  uECC_word_t q[2 * WORDS], a[2 * WORDS], b[2 * WORDS];
  uECC_word_t t[WORDS], lambda[WORDS], x[WORDS], y[WORDS];
  uECC_vli_bytesToNative(r, signature, 32);
  uECC_vli_bytesToNative(s, signature + 32, 32);
  uECC_vli_bytesToNative(e, digest, 32);
  if (uECC_vli_cmp(n, e, WORDS) != 1) uECC_vli_sub(e, e, n, WORDS);  // e mod n
  uECC_vli_modInv(w, s, n, WORDS);                                      // 1 / s
  uECC_vli_modMult(u1, e, w, n, WORDS);
  uECC_vli_modMult(u2, r, w, n, WORDS);
  uECC_vli_bytesToNative(q, publicKey, 32);
  uECC_vli_bytesToNative(q + WORDS, publicKey + 32, 32);
  uECC_point_mult(a, uECC_curve_G(curve), u1, curve);
  uECC_point_mult(b, q, u2, curve);
  if (uECC_vli_equal(a, b, WORDS)) return -1;  // same x: never for a valid signature in practice
  uECC_vli_modSub(t, b, a, p, WORDS);
  uECC_vli_modInv(t, t, p, WORDS);                          // 1 / (xb - xa)
  uECC_vli_modSub(lambda, b + WORDS, a + WORDS, p, WORDS);  // yb - ya
  uECC_vli_modMult_fast(lambda, lambda, t, curve);
  uECC_vli_modSquare_fast(x, lambda, curve);
  uECC_vli_modSub(x, x, a, p, WORDS);
  uECC_vli_modSub(x, x, b, p, WORDS);  // x = lambda^2 - xa - xb
  uECC_vli_modSub(t, a, x, p, WORDS);
  uECC_vli_modMult_fast(y, lambda, t, curve);
  uECC_vli_modSub(y, y, a + WORDS, p, WORDS);  // y = lambda (xa - x) - ya
  if (!uECC_vli_equal(x, r, WORDS)) return -1;  // R.x >= n (v would be 29/30): refuse
  return uECC_vli_testBit(y, 0) ? 1 : 0;
}

bool meterSign(const uint8_t privateKey[32], const uint8_t digest[32], uint8_t signature[65]) {
  uECC_Curve curve = uECC_secp256k1();
  static uint8_t scratch[2 * 32 + 64];
  uECC_HashContext hash = {&initHash, &updateHash, &finishHash, 64, 32, scratch};
  uint8_t publicKey[64];
  if (!uECC_compute_public_key(privateKey, publicKey, curve)) return false;
  if (!uECC_sign_deterministic(privateKey, digest, 32, &hash, signature, curve)) return false;
  int parity = recoveryParity(publicKey, digest, signature, curve);
  if (parity < 0) return false;
  // Low s (as libsecp256k1 and Ethereum require): s > n/2 becomes n - s, and R becomes -R.
  uECC_word_t s[WORDS], half[WORDS];
  const uECC_word_t *n = uECC_curve_n(curve);
  uECC_vli_bytesToNative(s, signature + 32, 32);
  uECC_vli_set(half, n, WORDS);
  uECC_vli_rshift1(half, WORDS);
  if (uECC_vli_cmp(s, half, WORDS) == 1) {
    uECC_vli_sub(s, n, s, WORDS);
    uECC_vli_nativeToBytes(signature + 32, 32, s);
    parity ^= 1;
  }
  signature[64] = (uint8_t)(27 + parity);
  return true;
}

#endif  // ARDUINO

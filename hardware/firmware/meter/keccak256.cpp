// Keccak-256 (see keccak256.h). Public domain.
#include "keccak256.h"

#include <string.h>

uint32_t keccakPermutations = 0;

static const uint8_t RATE = 136;  // (1600 - 2 * 256) / 8

// Round constants RC[i] (the LFSR of FIPS 202 algorithm 5, bits 2^j - 1 for j = 0..6).
static const uint64_t ROUND_CONSTANTS[24] = {
  0x0000000000000001ULL, 0x0000000000008082ULL, 0x800000000000808AULL, 0x8000000080008000ULL,
  0x000000000000808BULL, 0x0000000080000001ULL, 0x8000000080008081ULL, 0x8000000000008009ULL,
  0x000000000000008AULL, 0x0000000000000088ULL, 0x0000000080008009ULL, 0x000000008000000AULL,
  0x000000008000808BULL, 0x800000000000008BULL, 0x8000000000008089ULL, 0x8000000000008003ULL,
  0x8000000000008002ULL, 0x8000000000000080ULL, 0x000000000000800AULL, 0x800000008000000AULL,
  0x8000000080008081ULL, 0x8000000000008080ULL, 0x0000000080000001ULL, 0x8000000080008008ULL};

// Rho offsets of lane x + 5 * y: (t + 1)(t + 2) / 2 mod 64 along the walk of FIPS 202 3.2.2.
static const uint8_t RHO[25] = {0,  1,  62, 28, 27, 36, 44, 6,  55, 20, 3,  10, 43,
                                25, 39, 41, 45, 15, 21, 8,  18, 2,  61, 56, 14};

static inline uint64_t rotateLeft(uint64_t value, uint8_t bits) {
  return bits == 0 ? value : (value << bits) | (value >> (64 - bits));
}

static void keccakF1600(uint64_t lanes[25]) {
  uint64_t moved[25];
  for (uint8_t round = 0; round < 24; round++) {
    // theta: every lane takes the parity of two neighbouring columns
    uint64_t column[5];
    for (uint8_t x = 0; x < 5; x++) {
      column[x] = lanes[x] ^ lanes[x + 5] ^ lanes[x + 10] ^ lanes[x + 15] ^ lanes[x + 20];
    }
    for (uint8_t x = 0; x < 5; x++) {
      uint64_t d = column[(x + 4) % 5] ^ rotateLeft(column[(x + 1) % 5], 1);
      for (uint8_t y = 0; y < 25; y += 5) lanes[x + y] ^= d;
    }
    // rho and pi: lane (x, y) rotates and moves to (y, 2x + 3y)
    for (uint8_t x = 0; x < 5; x++) {
      for (uint8_t y = 0; y < 5; y++) {
        moved[y + 5 * ((2 * x + 3 * y) % 5)] = rotateLeft(lanes[x + 5 * y], RHO[x + 5 * y]);
      }
    }
    // chi: the only non-linear step, along each row
    for (uint8_t y = 0; y < 25; y += 5) {
      for (uint8_t x = 0; x < 5; x++) {
        lanes[x + y] = moved[x + y] ^ (~moved[(x + 1) % 5 + y] & moved[(x + 2) % 5 + y]);
      }
    }
    // iota
    lanes[0] ^= ROUND_CONSTANTS[round];
  }
  keccakPermutations++;
}

static inline void absorbByte(Keccak256 &hash, uint8_t byte) {
  hash.lanes[hash.position / 8] ^= (uint64_t)byte << (8 * (hash.position % 8));
}

void keccak256Init(Keccak256 &hash) {
  memset(hash.lanes, 0, sizeof hash.lanes);
  hash.position = 0;
}

void keccak256Update(Keccak256 &hash, const uint8_t *data, size_t length) {
  for (size_t i = 0; i < length; i++) {
    absorbByte(hash, data[i]);
    if (++hash.position == RATE) {
      keccakF1600(hash.lanes);
      hash.position = 0;
    }
  }
}

void keccak256Final(Keccak256 &hash, uint8_t digest[32]) {
  absorbByte(hash, 0x01);  // Keccak padding pad10*1: first bit ...
  hash.position = RATE - 1;
  absorbByte(hash, 0x80);  // ... and last bit of the block (the same byte if only one is free)
  keccakF1600(hash.lanes);
  for (uint8_t i = 0; i < 32; i++) digest[i] = (uint8_t)(hash.lanes[i / 8] >> (8 * (i % 8)));
}

void keccak256(const uint8_t *data, size_t length, uint8_t digest[32]) {
  Keccak256 hash;
  keccak256Init(hash);
  keccak256Update(hash, data, length);
  keccak256Final(hash, digest);
}

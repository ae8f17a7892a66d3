// Keccak-256 as Ethereum uses it (the original Keccak padding 0x01, not SHA3-256's 0x06):
// Keccak-f[1600], rate 136 bytes, 32-byte output. Written from the Keccak reference
// specification (FIPS 202 sections 3.2 and 3.3 for the permutation); public domain.
#pragma once

#include <stddef.h>
#include <stdint.h>

struct Keccak256 {
  uint64_t lanes[25];  // the 1600-bit state, lane (x, y) at index x + 5 * y, little-endian bytes
  uint8_t position;    // bytes absorbed into the current 136-byte block
};

// How many times Keccak-f[1600] ran since boot: the harness reports it as the hashing cost.
extern uint32_t keccakPermutations;

void keccak256Init(Keccak256 &hash);
void keccak256Update(Keccak256 &hash, const uint8_t *data, size_t length);
void keccak256Final(Keccak256 &hash, uint8_t digest[32]);
void keccak256(const uint8_t *data, size_t length, uint8_t digest[32]);

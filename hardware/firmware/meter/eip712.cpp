// EIP-712 hashing of a meter reading (see eip712.h).
#include "eip712.h"

#include <string.h>

#include "keccak256.h"

static const char DOMAIN_TYPE[] =
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)";
static const char READING_TYPE[] =
    "Reading(address meter,uint64 energyWh,uint64 sequence,uint64 blockNumber,bytes32 blockHash)";
static const char DOMAIN_NAME[] = "MeterRegistry";
static const char DOMAIN_VERSION[] = "1";

static void hashText(const char *text, uint8_t digest[32]) {
  keccak256((const uint8_t *)text, strlen(text), digest);
}

// abi.encode of a uint64 or an address: one 32-byte big-endian word, zero-padded on the left.
static void updateUint(Keccak256 &hash, uint64_t value) {
  uint8_t word[32] = {0};
  for (uint8_t i = 0; i < 8; i++) word[31 - i] = (uint8_t)(value >> (8 * i));
  keccak256Update(hash, word, sizeof word);
}

static void updateAddress(Keccak256 &hash, const uint8_t address[20]) {
  static const uint8_t padding[12] = {0};
  keccak256Update(hash, padding, sizeof padding);
  keccak256Update(hash, address, 20);
}

void eip712DomainSeparator(uint64_t chainId, const uint8_t registry[20], uint8_t separator[32]) {
  uint8_t field[32];
  Keccak256 hash;
  keccak256Init(hash);
  hashText(DOMAIN_TYPE, field);
  keccak256Update(hash, field, 32);
  hashText(DOMAIN_NAME, field);
  keccak256Update(hash, field, 32);
  hashText(DOMAIN_VERSION, field);
  keccak256Update(hash, field, 32);
  updateUint(hash, chainId);
  updateAddress(hash, registry);
  keccak256Final(hash, separator);
}

void eip712ReadingDigest(const uint8_t separator[32], const uint8_t meter[20], uint64_t energyWh,
                         uint64_t sequence, uint64_t blockNumber, const uint8_t blockHash[32],
                         uint8_t digest[32]) {
  static uint8_t typeHash[32];
  static bool haveTypeHash = false;
  if (!haveTypeHash) {
    hashText(READING_TYPE, typeHash);
    haveTypeHash = true;
  }
  uint8_t structHash[32];
  Keccak256 hash;
  keccak256Init(hash);
  keccak256Update(hash, typeHash, 32);
  updateAddress(hash, meter);
  updateUint(hash, energyWh);
  updateUint(hash, sequence);
  updateUint(hash, blockNumber);
  keccak256Update(hash, blockHash, 32);  // bytes32: the word itself
  keccak256Final(hash, structHash);

  static const uint8_t prefix[2] = {0x19, 0x01};
  keccak256Init(hash);
  keccak256Update(hash, prefix, 2);
  keccak256Update(hash, separator, 32);
  keccak256Update(hash, structHash, 32);
  keccak256Final(hash, digest);
}

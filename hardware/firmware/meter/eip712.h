// The EIP-712 message a meter signs (hardware/PROTOCOL.md, "Signed readings"):
//   domain    EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)
//             with name "MeterRegistry", version "1"
//   message   Reading(address meter,uint64 energyWh,uint64 sequence,uint64 blockNumber,
//                     bytes32 blockHash)
//   digest    keccak256(0x19 0x01 || domainSeparator || keccak256(abi.encode(typehash, ...)))
#pragma once

#include <stdint.h>

// keccak256 of the domain: computed once, when the meter is provisioned or boots.
void eip712DomainSeparator(uint64_t chainId, const uint8_t registry[20], uint8_t separator[32]);

// The digest of one reading of block (blockNumber, blockHash): three Keccak-f[1600] permutations
// (the 192-byte struct takes two, the type hash is cached).
void eip712ReadingDigest(const uint8_t separator[32], const uint8_t meter[20], uint64_t energyWh,
                         uint64_t sequence, uint64_t blockNumber, const uint8_t blockHash[32],
                         uint8_t digest[32]);

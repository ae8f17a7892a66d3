// Host shim for EEPROM: 1 KiB, erased (0xFF) at start, counting writes for the wear test.
#pragma once

#include <cstdint>
#include <cstring>

class EEPROMClass {
 public:
  uint8_t bytes[1024];
  unsigned long writes = 0;

  EEPROMClass() { memset(bytes, 0xFF, sizeof bytes); }
  template <typename T>
  T &get(int address, T &value) {
    memcpy(&value, bytes + address, sizeof(T));
    return value;
  }
  template <typename T>
  const T &put(int address, const T &value) {
    memcpy(bytes + address, &value, sizeof(T));
    writes++;
    return value;
  }
};

inline EEPROMClass EEPROM;

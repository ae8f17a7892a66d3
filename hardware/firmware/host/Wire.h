// Host shim for Wire (I2C) with a fake INA226 at address 0x40: eight 16-bit registers that the
// harness sets, and a `nack` switch that makes the sensor vanish from the bus.
#pragma once

#include <cstdint>

class TwoWire {
 public:
  uint16_t registers[8] = {0x4127, 0, 0, 0, 0, 0, 0, 0};
  bool nack = false;

  void begin() {}
  void beginTransmission(uint8_t address) {
    target_ = address;
    outLen_ = 0;
  }
  size_t write(uint8_t value) {
    if (outLen_ < 3) out_[outLen_++] = value;
    return 1;
  }
  uint8_t endTransmission(bool = true) {
    if (nack || target_ != 0x40 || outLen_ == 0) return 2;  // 2: address NACK
    pointer_ = out_[0] & 7;
    if (outLen_ == 3) registers[pointer_] = (uint16_t)((out_[1] << 8) | out_[2]);
    return 0;
  }
  uint8_t requestFrom(uint8_t address, uint8_t quantity) {
    if (nack || address != 0x40 || quantity != 2) return 0;
    in_[0] = (uint8_t)(registers[pointer_] >> 8);
    in_[1] = (uint8_t)(registers[pointer_] & 0xFF);
    inPos_ = 0;
    return 2;
  }
  int read() { return inPos_ < 2 ? in_[inPos_++] : -1; }

 private:
  uint8_t target_ = 0, outLen_ = 0, pointer_ = 0, inPos_ = 2;
  uint8_t out_[3] = {0, 0, 0}, in_[2] = {0, 0};
};

inline TwoWire Wire;

// Host shim for the few Arduino APIs meter.ino uses, so g++ can build and test the sketch.
// Time is simulated: the harness sets `harnessMillis`. Serial is two byte queues.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <string>

#define HIGH 1
#define LOW 0
#define OUTPUT 1

inline uint32_t harnessMillis = 0;
inline uint8_t harnessPins[32] = {0};

inline uint32_t millis() { return harnessMillis; }
inline void pinMode(uint8_t, uint8_t) {}
inline void digitalWrite(uint8_t pin, uint8_t value) { harnessPins[pin & 31] = value; }

class HardwareSerial {
 public:
  std::deque<uint8_t> rx;  // bytes the host sent, not yet read by the sketch
  std::string tx;          // bytes the sketch wrote, not yet collected by the harness
  void begin(unsigned long) {}
  int available() { return (int)rx.size(); }
  int read() {
    if (rx.empty()) return -1;
    uint8_t c = rx.front();
    rx.pop_front();
    return c;
  }
  size_t write(uint8_t c) {
    tx.push_back((char)c);
    return 1;
  }
  size_t print(const char *text) {
    tx += text;
    return strlen(text);
  }
};

inline HardwareSerial Serial;

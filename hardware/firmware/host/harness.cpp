// Host harness: builds meter.ino with the shims in this directory and drives it from stdin.
//
//   g++ -std=c++17 -Wall -Wextra -Werror -Ihardware/firmware/host -Ihardware/firmware/meter
//       -o meter-harness hardware/firmware/host/harness.cpp
//
// Each stdin line is either a frame for the meter (sent with a LF; the meter's output follows,
// then "#end") or a directive (answered with one "#..." line):
//   #advance MS        run loop() while simulated time moves MS milliseconds in 10 ms steps
//   #sensor MV MA      the fake INA226 measures MV millivolts and MA milliamps
//   #nack 0|1          the sensor stops (1) or resumes (0) answering on the I2C bus
//   #raw HEX           send these bytes (no LF added), then print output and "#end"
//   #pin               print "#pin 0|1": the relay output
//   #eeprom            print "#eeprom WRITES"
//   #reboot            run setup() again (RAM state restarts, EEPROM is kept)
#include <iostream>
#include <string>

#include "Arduino.h"
#include "meter.ino"

static void flushOutput() {
  std::cout << Serial.tx;
  Serial.tx.clear();
}

static void feed(const std::string &bytes) {
  for (char c : bytes) Serial.rx.push_back((uint8_t)c);
  loop();
  flushOutput();
  std::cout << "#end" << std::endl;
}

static std::string fromHex(const std::string &hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back((char)std::stoi(hex.substr(i, 2), nullptr, 16));
  }
  return out;
}

int main() {
  harnessMillis = 1000;
  setup();
  std::string input;
  while (std::getline(std::cin, input)) {
    if (input.rfind("#advance ", 0) == 0) {
      long remaining = std::stol(input.substr(9));
      while (remaining > 0) {
        long step = remaining < 10 ? remaining : 10;
        harnessMillis += (uint32_t)step;
        remaining -= step;
        loop();
      }
      flushOutput();
      std::cout << "#ok" << std::endl;
    } else if (input.rfind("#sensor ", 0) == 0) {
      long millivolts = 0, milliamps = 0;
      sscanf(input.c_str() + 8, "%ld %ld", &millivolts, &milliamps);
      Wire.registers[2] = (uint16_t)(millivolts * 100 / 125);                  // 1.25 mV/bit
      Wire.registers[1] = (uint16_t)(int16_t)(milliamps * SHUNT_MICROOHM / 2500);  // 2.5 uV/bit
      std::cout << "#ok" << std::endl;
    } else if (input.rfind("#nack ", 0) == 0) {
      Wire.nack = input.substr(6) == "1";
      std::cout << "#ok" << std::endl;
    } else if (input.rfind("#raw ", 0) == 0) {
      feed(fromHex(input.substr(5)));
    } else if (input == "#pin") {
      std::cout << "#pin " << (int)harnessPins[RELAY_PIN] << std::endl;
    } else if (input == "#eeprom") {
      std::cout << "#eeprom " << EEPROM.writes << std::endl;
    } else if (input == "#reboot") {
      setup();
      std::cout << "#ok" << std::endl;
    } else {
      feed(input + "\n");
    }
  }
  return 0;
}

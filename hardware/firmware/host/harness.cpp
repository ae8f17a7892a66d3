// Host harness: builds meter.ino (with its Keccak-256 and EIP-712 code) with the shims in this
// directory and the signing interface on libsecp256k1, and drives it from stdin.
//
//   g++ -std=c++17 -Wall -Wextra -Werror -Ihardware/firmware/host -Ihardware/firmware/meter
//       -o meter-harness hardware/firmware/host/harness.cpp -lsecp256k1
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
//   #wipe              erase the whole EEPROM and reboot: a new meter (a new key at first boot)
//   #setkey HEX        store this private key as if made at first boot, then reboot
//   #setcounter WH SEQ erase counter and sequence slots, store WH and SEQ (the last sequence
//                      used), then reboot: the next reading is WH at sequence SEQ + 1
//   #keccak HEX        print "#keccak DIGEST" computed by the sketch's Keccak-256
//   #stats             print "#stats PERMUTATIONS SIGNATURES" since the harness started
#include <iostream>
#include <string>

#include "Arduino.h"
#include "eip712.cpp"
#include "keccak256.cpp"
#include "meter.ino"
#include "meter_sign_secp256k1.cpp"

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
    } else if (input == "#wipe") {
      memset(EEPROM.bytes, 0xFF, sizeof EEPROM.bytes);
      setup();
      std::cout << "#ok" << std::endl;
    } else if (input.rfind("#setkey ", 0) == 0) {
      std::string key = fromHex(input.substr(8));
      KeyRecord record;
      record.magic = KEY_MAGIC;
      memcpy(record.privateKey, key.data(), key.size() < 32 ? key.size() : 32);
      record.crc = crcBytes(record.privateKey, 32);
      EEPROM.put(EE_KEY, record);
      setup();
      std::cout << "#ok" << std::endl;
    } else if (input.rfind("#setcounter ", 0) == 0) {
      unsigned long wh = 0, sequence = 0;
      sscanf(input.c_str() + 12, "%lu %lu", &wh, &sequence);
      memset(EEPROM.bytes + EE_COUNTER, 0xFF, 4 * EEPROM_SLOTS);
      memset(EEPROM.bytes + EE_SEQUENCE, 0xFF, 4 * SEQUENCE_SLOTS);
      EEPROM.put(EE_COUNTER, (uint32_t)wh);
      EEPROM.put(EE_SEQUENCE, (uint32_t)sequence);
      setup();
      std::cout << "#ok" << std::endl;
    } else if (input.rfind("#keccak ", 0) == 0 || input == "#keccak") {
      std::string data = input.size() > 8 ? fromHex(input.substr(8)) : std::string();
      uint8_t digest[32];
      keccak256((const uint8_t *)data.data(), data.size(), digest);
      char hex[67];
      appendHex(hex, digest, 32);
      std::cout << "#keccak " << hex << std::endl;
    } else if (input == "#stats") {
      std::cout << "#stats " << keccakPermutations << " " << harnessSignatures << std::endl;
    } else {
      feed(input + "\n");
    }
  }
  return 0;
}

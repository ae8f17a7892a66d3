// Microgrid meter firmware: one DC meter (INA226 current/voltage sensor + relay) speaking the
// line protocol of hardware/PROTOCOL.md, version 1, at 115200 baud 8N1.
//
// Wiring (Arduino Uno/Nano, 5 V logic): INA226 SDA->A4, SCL->A5, VCC->5V, GND->GND, address 0x40
// (A0 = A1 = GND); shunt in the positive line, VBUS on the measured side; relay module IN->D7.
// The host harness in ../host compiles this file with g++ and drives it from the tests.

#include <Arduino.h>
#include <EEPROM.h>
#include <Wire.h>

// ---- Per-meter settings: edit before flashing -------------------------------------------------
#define METER_ID "meter-01"      // 1..32 of [A-Za-z0-9._-]
#define METER_KIND "supply"      // "supply" (PV -> battery) or "load" (battery -> consumer)
#define FIRMWARE_VERSION "1.0.0"
static const uint32_t RATED_POWER_W = 1000;  // register the meter on chain with this rating
static const uint32_t WATCHDOG_S = 10;       // relay opens after this long without a valid command
static const uint8_t RELAY_PIN = 7;
static const bool RELAY_ACTIVE_HIGH = true;
static const uint8_t INA226_ADDRESS = 0x40;
static const int32_t SHUNT_MICROOHM = 2000;  // 2 mOhm: 40.96 A full scale
static const uint32_t SAMPLE_MS = 100;
static const uint32_t EEPROM_STEP_WH = 10;   // persist the counter every 10 Wh ...
static const uint8_t EEPROM_SLOTS = 64;      // ... rotating over 64 slots to spread the wear

// ---- Protocol constants (PROTOCOL.md) ----------------------------------------------------------
static const uint8_t MAX_LINE = 120;  // bytes before LF, a trailing CR included
enum ErrorCode : uint8_t {
  ERR_CHECKSUM = 1, ERR_FRAME = 2, ERR_TOO_LONG = 3, ERR_UNKNOWN = 4, ERR_ARGUMENT = 5,
  ERR_SENSOR = 6
};
static const char *const ERROR_TEXT[] = {
  "", "bad checksum", "bad frame", "line too long", "unknown command", "bad argument",
  "sensor fault"
};
static const uint64_t MICROJOULES_PER_WH = 3600000000ULL;

// ---- State (all set in setup(), so a reset starts clean) ---------------------------------------
static char line[MAX_LINE + 1];
static uint8_t lineLen;
static bool lineOverflow;   // discarding a too-long line up to its LF
static bool relayClosed;
static uint32_t lastValidMs;  // last command answered OK: feeds the watchdog
static uint32_t lastSampleMs;
static uint32_t samples;
static bool sensorOk;
static int32_t busMillivolts, currentMilliamps, powerMilliwatts;
static uint32_t energyWh, savedWh;
static uint64_t residualMicrojoules;  // energy not yet a whole Wh

// ---- Helpers -----------------------------------------------------------------------------------

// CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final XOR.
static uint16_t crc16(const char *data, uint8_t len) {
  uint16_t crc = 0xFFFF;
  for (uint8_t i = 0; i < len; i++) {
    crc ^= (uint16_t)((uint8_t)data[i]) << 8;
    for (uint8_t bit = 0; bit < 8; bit++) {
      crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
  }
  return crc;
}

static bool isUpperHex(char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); }

static uint16_t hexValue(const char *text) {
  uint16_t value = 0;
  for (uint8_t i = 0; i < 4; i++) {
    value = (uint16_t)((value << 4) | (text[i] <= '9' ? text[i] - '0' : text[i] - 'A' + 10));
  }
  return value;
}

// Sequence number: "0" or 1..5 digits without a leading zero, at most 65535; -1 if not.
static int32_t parseSeq(const char *text) {
  size_t len = strlen(text);
  if (len == 0 || len > 5 || (len > 1 && text[0] == '0')) return -1;
  int32_t value = 0;
  for (size_t i = 0; i < len; i++) {
    if (text[i] < '0' || text[i] > '9') return -1;
    value = value * 10 + (text[i] - '0');
  }
  return value <= 65535 ? value : -1;
}

static bool isCommandName(const char *text) {
  size_t len = strlen(text);
  if (len == 0 || len > 8) return false;
  for (size_t i = 0; i < len; i++) {
    if (text[i] < 'A' || text[i] > 'Z') return false;
  }
  return true;
}

// Writes `milli` / 1000 with 1, 2 or 3 decimals (truncated), e.g. 812437 mW, 1 -> "812.4".
static const char *fixed(char *out, size_t size, int32_t milli, uint8_t decimals) {
  uint32_t magnitude = milli < 0 ? (uint32_t)(-(int64_t)milli) : (uint32_t)milli;
  const char *sign = milli < 0 ? "-" : "";
  unsigned long whole = magnitude / 1000, frac = magnitude % 1000;
  if (decimals == 1) snprintf(out, size, "%s%lu.%01lu", sign, whole, frac / 100);
  else if (decimals == 2) snprintf(out, size, "%s%lu.%02lu", sign, whole, frac / 10);
  else snprintf(out, size, "%s%lu.%03lu", sign, whole, frac);
  return out;
}

// Sends "$<body>*<CRC>\n".
static void sendFrame(const char *body) {
  char tail[6];
  snprintf(tail, sizeof tail, "*%04X", (unsigned)crc16(body, (uint8_t)strlen(body)));
  Serial.write('$');
  Serial.print(body);
  Serial.print(tail);
  Serial.write('\n');
}

static void sendError(uint16_t seq, uint8_t code) {
  char body[40];
  snprintf(body, sizeof body, "%u,ERR,%u,%s", (unsigned)seq, (unsigned)code, ERROR_TEXT[code]);
  sendFrame(body);
}

static void setRelay(bool closed) {
  relayClosed = closed;
  digitalWrite(RELAY_PIN, closed == RELAY_ACTIVE_HIGH ? HIGH : LOW);
}

// ---- Sensor and counter ------------------------------------------------------------------------

static bool writeRegister(uint8_t reg, uint16_t value) {
  Wire.beginTransmission(INA226_ADDRESS);
  Wire.write(reg);
  Wire.write((uint8_t)(value >> 8));
  Wire.write((uint8_t)(value & 0xFF));
  return Wire.endTransmission() == 0;
}

static bool readRegister(uint8_t reg, uint16_t &value) {
  Wire.beginTransmission(INA226_ADDRESS);
  Wire.write(reg);
  if (Wire.endTransmission(false) != 0) return false;
  if (Wire.requestFrom(INA226_ADDRESS, (uint8_t)2) != 2) return false;
  uint16_t high = (uint16_t)Wire.read();  // two statements: the byte order must be fixed
  uint16_t low = (uint16_t)Wire.read();
  value = (uint16_t)((high << 8) | low);
  return true;
}

// One sample over the last `elapsedMs`: only forward (positive) power counts as energy.
static void sample(uint32_t elapsedMs) {
  uint16_t shunt, bus;
  if (!readRegister(0x01, shunt) || !readRegister(0x02, bus)) {
    sensorOk = false;  // READ answers ERR 6; energy in the gap is not counted
    return;
  }
  sensorOk = true;
  samples++;
  busMillivolts = (int32_t)bus * 125 / 100;                                  // 1.25 mV/bit
  currentMilliamps = (int32_t)((int64_t)(int16_t)shunt * 2500 / SHUNT_MICROOHM);  // 2.5 uV/bit
  powerMilliwatts = (int32_t)((int64_t)busMillivolts * currentMilliamps / 1000);
  if (powerMilliwatts > 0) {
    residualMicrojoules += (uint64_t)powerMilliwatts * elapsedMs;  // mW x ms = uJ
    while (residualMicrojoules >= MICROJOULES_PER_WH) {
      residualMicrojoules -= MICROJOULES_PER_WH;
      energyWh++;
    }
  }
}

// The counter survives a reset: the largest value in the slots (erased slots read 0xFFFFFFFF).
static void loadEnergy() {
  uint32_t best = 0;
  for (uint8_t i = 0; i < EEPROM_SLOTS; i++) {
    uint32_t value;
    EEPROM.get(i * 4, value);
    if (value != 0xFFFFFFFFUL && value > best) best = value;
  }
  energyWh = savedWh = best;
}

static void saveEnergy() {
  if (energyWh - savedWh < EEPROM_STEP_WH) return;
  EEPROM.put((int)((energyWh / EEPROM_STEP_WH) % EEPROM_SLOTS) * 4, energyWh);
  savedWh = energyWh;
}

// ---- Protocol ----------------------------------------------------------------------------------

// Handles one complete line (without LF), in the order of PROTOCOL.md "Receiving".
static void handleLine() {
  if (lineLen > 0 && line[lineLen - 1] == '\r') lineLen--;
  if (lineLen == 0) return;  // empty lines are ignored
  if (lineLen < 6 || line[0] != '$' || line[lineLen - 5] != '*') return sendError(0, ERR_FRAME);
  for (uint8_t i = 0; i < lineLen; i++) {
    char c = line[i];
    bool inBody = i >= 1 && i < lineLen - 5;
    if (c < 0x20 || c > 0x7E || (inBody && (c == '$' || c == '*')) ||
        (i > lineLen - 5 && !isUpperHex(c))) {
      return sendError(0, ERR_FRAME);
    }
  }
  if (crc16(line + 1, lineLen - 6) != hexValue(line + lineLen - 4)) {
    return sendError(0, ERR_CHECKSUM);
  }

  line[lineLen - 5] = '\0';  // the body is now a C string; split it at the commas
  char *fields[4];
  uint8_t count = 0;
  fields[count++] = line + 1;
  for (char *p = line + 1; *p; p++) {
    if (*p != ',') continue;
    *p = '\0';
    if (count < 4) fields[count] = p + 1;
    if (count < 255) count++;
  }
  int32_t seq = parseSeq(fields[0]);
  if (count < 2 || seq < 1 || !isCommandName(fields[1])) return sendError(0, ERR_FRAME);
  const char *name = fields[1];
  uint8_t args = count - 2;

  char body[MAX_LINE];
  if (strcmp(name, "ID") == 0) {
    if (args != 0) return sendError((uint16_t)seq, ERR_ARGUMENT);
    snprintf(body, sizeof body, "%u,OK,ID,%s,%s,%s,%lu,%lu,1", (unsigned)seq, METER_ID,
             FIRMWARE_VERSION, METER_KIND, (unsigned long)RATED_POWER_W,
             (unsigned long)WATCHDOG_S);
  } else if (strcmp(name, "READ") == 0) {
    if (args != 0) return sendError((uint16_t)seq, ERR_ARGUMENT);
    if (!sensorOk) return sendError((uint16_t)seq, ERR_SENSOR);
    char power[16], volts[16], amps[16];
    snprintf(body, sizeof body, "%u,OK,READ,%lu,%s,%s,%s,%c,%lu", (unsigned)seq,
             (unsigned long)energyWh, fixed(power, sizeof power, powerMilliwatts, 1),
             fixed(volts, sizeof volts, busMillivolts, 2),
             fixed(amps, sizeof amps, currentMilliamps, 3), relayClosed ? '1' : '0',
             (unsigned long)samples);
  } else if (strcmp(name, "RELAY") == 0) {
    // Idempotent: "1" closes, "0" opens, whatever the state was; there is no toggle.
    if (args != 1 || strlen(fields[2]) != 1 || (fields[2][0] != '0' && fields[2][0] != '1')) {
      return sendError((uint16_t)seq, ERR_ARGUMENT);
    }
    setRelay(fields[2][0] == '1');
    snprintf(body, sizeof body, "%u,OK,RELAY,%c", (unsigned)seq, relayClosed ? '1' : '0');
  } else if (strcmp(name, "HB") == 0) {
    if (args != 0) return sendError((uint16_t)seq, ERR_ARGUMENT);
    snprintf(body, sizeof body, "%u,OK,HB,%c", (unsigned)seq, relayClosed ? '1' : '0');
  } else {
    return sendError((uint16_t)seq, ERR_UNKNOWN);
  }
  lastValidMs = millis();  // only a command answered OK feeds the watchdog
  sendFrame(body);
}

static void receive(char c) {
  if (c == '\n') {
    if (lineOverflow) sendError(0, ERR_TOO_LONG);
    else handleLine();
    lineLen = 0;
    lineOverflow = false;
  } else if (!lineOverflow) {
    if (lineLen == MAX_LINE) lineOverflow = true;  // drop everything up to the next LF
    else line[lineLen++] = c;
  }
}

// ---- Arduino entry points ----------------------------------------------------------------------

void setup() {
  pinMode(RELAY_PIN, OUTPUT);
  setRelay(false);  // power-on state: open, no unpaid power before the host says so
  lineLen = 0;
  lineOverflow = false;
  samples = 0;
  sensorOk = false;
  busMillivolts = currentMilliamps = powerMilliwatts = 0;
  residualMicrojoules = 0;
  Serial.begin(115200);
  Wire.begin();
  writeRegister(0x00, 0x4527);  // INA226: average 16 samples, 1.1 ms conversions, continuous
  loadEnergy();
  lastSampleMs = lastValidMs = millis();
}

void loop() {
  while (Serial.available() > 0) receive((char)Serial.read());
  uint32_t now = millis();
  if (now - lastSampleMs >= SAMPLE_MS) {
    sample(now - lastSampleMs);
    lastSampleMs = now;
    saveEnergy();
  }
  if (relayClosed && now - lastValidMs >= WATCHDOG_S * 1000UL) setRelay(false);  // watchdog
}

// Prints, as JSON, what a Signal client uploads so its device counts as enabled: an identity key and a signed
// EC pre-key whose signature that identity key made. Uses the libsignal classes inside the Signal-Server jar
// under test: java -cp TextSecureServer.jar SignalTestKeys.java
import java.util.Base64;
import org.signal.libsignal.protocol.IdentityKeyPair;
import org.signal.libsignal.protocol.ecc.Curve;
import org.signal.libsignal.protocol.ecc.ECKeyPair;

public class SignalTestKeys {
  public static void main(String[] args) throws Exception {
    Base64.Encoder b64 = Base64.getEncoder();
    IdentityKeyPair identity = IdentityKeyPair.generate();
    ECKeyPair signedPreKey = Curve.generateKeyPair();
    byte[] publicKey = signedPreKey.getPublicKey().serialize();
    byte[] signature = identity.getPrivateKey().calculateSignature(publicKey);
    System.out.println("{\"identityKey\": \"" + b64.encodeToString(identity.getPublicKey().serialize())
        + "\", \"signedPreKey\": {\"keyId\": 1, \"publicKey\": \"" + b64.encodeToString(publicKey)
        + "\", \"signature\": \"" + b64.encodeToString(signature) + "\"}}");
  }
}
